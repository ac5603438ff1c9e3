"""Our safetensors checkpoints: the same bytes for the same content, written without copies in memory."""

import tracemalloc

import torch
from safetensors.torch import load_file
from torch import nn

from emojich.models.checkpoints import safetensors_bytes, save_safetensors


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.LayerNorm(512), nn.Linear(512, 256))


METADATA = {"b": "2", "a": "1", "config": '{"x": 1}', "weights_origin": "standin"}


def test_saved_file_is_the_in_memory_file_with_a_sorted_header(tmp_path):
    model = _model()
    save_safetensors(model, tmp_path / "m.safetensors", METADATA)
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert (tmp_path / "m.safetensors").read_bytes() == safetensors_bytes(tensors, METADATA)
    loaded = load_file(str(tmp_path / "m.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_tied_weights_are_saved_once_each(tmp_path):
    model = _model()
    model[2].weight = nn.Parameter(model[0].weight.t())  # shares storage, not contiguous
    save_safetensors(model, tmp_path / "tied.safetensors")
    loaded = load_file(str(tmp_path / "tied.safetensors"))
    assert torch.equal(loaded["2.weight"], model[0].weight.t())


def test_saving_does_not_build_the_file_in_python_memory(tmp_path):
    """At 1.3B parameters the in-memory route held the 5.2 GB file four times over."""
    model = _model()
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    tracemalloc.start()
    try:
        save_safetensors(model, tmp_path / "m.safetensors", METADATA)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 4, (peak, size)
