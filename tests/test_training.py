import pytest
import torch
from torch import nn

from emojich.train.loop import TrainConfig, Trainer, batches_from, lr_at


class Toy(nn.Module):
    """Big enough for bitsandbytes to keep 8-bit states (>= 4096 elements), with dropout for RNG use."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 256), nn.Dropout(0.2), nn.GELU(), nn.Linear(256, 4))


def _data(size=10):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(size, 16, generator=generator), torch.randint(0, 4, (size,), generator=generator)


def _loss_fn(inputs, targets):
    def loss(model, indices):
        value = nn.functional.cross_entropy(model.net(inputs[indices]), targets[indices])
        return value, {"ce": value.detach()}

    return loss


def _trainer(config, size=10):
    torch.manual_seed(1)
    inputs, targets = _data(size)
    return Trainer(Toy(), _loss_fn(inputs, targets), len(inputs), config, torch.device("cpu"))


@pytest.mark.parametrize("optimizer", ["adamw", "adam8bit"])
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, optimizer):
    config = TrainConfig(
        epochs=3,
        batch_size=3,
        lr_start=1e-3,
        lr_max=1e-2,
        lr_final=1e-4,
        optimizer=optimizer,
        checkpoint_every=2,
    )
    whole = _trainer(config)
    whole.run()

    first = _trainer(config)
    first.run(tmp_path, stop_after=5)  # "killed" after step 5; the last checkpoint holds step 4
    torch.manual_seed(999)  # a new process starts with other RNG state
    second = _trainer(config)
    assert second.resume(tmp_path) and second.step == 4
    second.run(tmp_path)

    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name
    assert not list(tmp_path.glob(".*.tmp"))


def test_schedule_hits_the_reports_three_learning_rates():
    config = TrainConfig(epochs=1, batch_size=1, max_steps=100, optimizer="adamw")
    trainer = _trainer(config, size=100)
    seen = []
    trainer.run(on_step=lambda record: seen.append(record.lr))
    assert seen[0] == pytest.approx(4e-7)
    assert max(seen) == pytest.approx(1e-5)
    assert seen.index(max(seen)) == 9  # warm-up is 10% of the steps
    assert seen[-1] == pytest.approx(2e-8, rel=1e-2)
    assert [lr_at(config, 100, s) for s in (0, 9, 99)] == pytest.approx(
        [seen[0], seen[9], seen[99]], rel=1e-6
    )


def test_tiny_runs_get_a_valid_schedule():
    config = TrainConfig(epochs=1, batch_size=1, max_steps=3, optimizer="adamw")
    seen = []
    _trainer(config).run(on_step=lambda record: seen.append(record.lr))
    assert len(seen) == 3 and seen[0] == pytest.approx(4e-7)


def test_data_order_is_a_pure_function_of_seed_and_epoch():
    config = TrainConfig(epochs=2, batch_size=3)
    full = list(batches_from(0, 10, config))
    assert len(full) == 6
    assert [s for s, _ in batches_from(4, 10, config)] == [4, 5]
    assert torch.equal(full[4][1], dict(batches_from(4, 10, config))[4])
    epoch0 = torch.cat([b for _, b in full[:3]])
    assert len(set(epoch0.tolist())) == 9  # no example twice within an epoch


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="lr_final <= lr_start <= lr_max"):
        TrainConfig(lr_start=1e-3, lr_max=1e-4)
    with pytest.raises(ValueError, match="empty"):
        Trainer(Toy(), _loss_fn(*_data()), 0, TrainConfig(), torch.device("cpu"))
    with pytest.raises(ValueError, match="fp16 training needs a GPU"):
        Trainer(Toy(), _loss_fn(*_data()), 10, TrainConfig(precision="fp16"), torch.device("cpu"))
    frozen = Toy().requires_grad_(False)
    with pytest.raises(ValueError, match="everything is frozen"):
        Trainer(frozen, _loss_fn(*_data()), 10, TrainConfig(), torch.device("cpu"))
