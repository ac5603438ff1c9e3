"""The encoder-conditioned model, "read as", recolouring and the generalisation measures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from emojich.data.recolour import dominant_hue, recolour, recolour_batch
from emojich.fidelity.retrieval import Reference, shape_features, thumbnails
from emojich.fidelity.sets import set_metrics
from emojich.generate.reading import CaptionReader, without_colour_words
from emojich.generate.sampling import generate, reference_draws
from emojich.models.dalle import Dalle, DalleConfig
from emojich.text.colours import BY_NAME, hue_distance
from emojich.text.encoder import load_encoder
from emojich.text.prompt_sets import parse_prompt_set
from emojich.train.pairs import memory_table


@pytest.fixture(scope="module")
def conditioned() -> Dalle:
    torch.manual_seed(0)
    return Dalle(DalleConfig.preset("tiny-encoder")).eval()


def test_a_conditioned_model_reads_caption_vectors_and_nothing_else(conditioned):
    cfg = conditioned.config
    text = conditioned.blank_text(2)
    codes = torch.randint(0, cfg.image_vocab_size, (2, cfg.image_seq_length))
    vectors = torch.randn(2, 2, cfg.condition_dim)
    loss, parts = conditioned(text, codes, return_loss=True, condition=vectors)
    assert torch.isfinite(loss) and set(parts) == {"text", "image"}
    with pytest.raises(ValueError, match="needs caption vectors"):
        conditioned(text, codes)
    with pytest.raises(ValueError, match="needs caption vectors"):
        conditioned(text, codes, condition=torch.randn(2, cfg.condition_dim))
    # The caption changes the prediction: the vectors are read.
    other = conditioned(text, codes, condition=-vectors)
    assert not torch.allclose(conditioned(text, codes, condition=vectors), other)


def test_the_caption_memory_finds_a_training_captions_own_slot_and_blends_for_new_ones():
    cfg = dataclasses.replace(
        DalleConfig.preset("tiny-encoder"), memory_keys=3, memory_slots=2, reference_codes=False
    )
    model = Dalle(cfg)
    keys = torch.nn.functional.normalize(
        torch.randn(3, cfg.condition_dim, generator=torch.Generator().manual_seed(2)), dim=1
    )
    model.caption_memory.set_keys(keys, torch.tensor([0, 0, 1]))  # two captions of one emoji
    weights = model.caption_memory.weights(keys)
    assert torch.allclose(weights, torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), atol=1e-3)
    between = torch.nn.functional.normalize(keys[1] + keys[2], dim=0)
    assert torch.allclose(model.caption_memory.weights(between[None]), torch.tensor([[0.5, 0.5]]), atol=1e-3)
    # Kept in the checkpoint, so a loaded model looks up the same captions.
    assert {"caption_memory.keys", "caption_memory.key_slots"} <= set(model.state_dict())
    with pytest.raises(ValueError, match="do not fit"):
        model.caption_memory.set_keys(keys[:2], torch.tensor([0, 1]))


def test_the_published_text_path_has_no_projection_and_refuses_vectors():
    model = Dalle(DalleConfig.preset("tiny"))
    assert not any(name.startswith("caption_projection") for name in model.state_dict())
    with pytest.raises(ValueError, match="takes no caption vectors"):
        model(torch.zeros(1, model.config.text_seq_length, dtype=torch.long), condition=torch.zeros(1, 512))


def test_conditioned_sampling_is_deterministic_and_follows_the_caption(conditioned):
    cfg = conditioned.config
    vectors = torch.randn(2, 2, cfg.condition_dim, generator=torch.Generator().manual_seed(1))
    kwargs = dict(images_num=3, top_k=8, top_p=1.0, seed=5, progress=False, batch_size=2)
    first = generate(conditioned, conditioned.blank_text(2), conditions=vectors, **kwargs)
    again = generate(conditioned, conditioned.blank_text(2), conditions=vectors, **kwargs)
    assert torch.equal(first.codes, again.codes) and torch.equal(first.scores, again.scores)
    # Guidance runs the "no caption" rows with zero vectors beside the caption's.
    guided = generate(conditioned, conditioned.blank_text(2), conditions=vectors, guidance=2.0, **kwargs)
    assert guided.codes.shape == first.codes.shape
    # The same seeds under the other caption draw other images: the caption is what steers them.
    swapped = generate(conditioned, conditioned.blank_text(2), conditions=vectors.flip(0), **kwargs)
    assert not torch.equal(swapped.codes, first.codes)


@pytest.fixture(scope="module")
def reader() -> CaptionReader:
    encoder = load_encoder()
    captions = ["кошка", "котенок", "кролик", "зайчик", "флаг Япония", "флаг японии", "синее сердце", "банан"]
    names = ["кошка", "кошка", "кролик", "кролик", "флаг Япония", "флаг Япония", "синее сердце", "банан"]
    return CaptionReader(captions, names, encoder.encode(captions))


def test_a_caption_that_is_no_catalogue_name_is_read_as_its_nearest_emoji(reader):
    encode = load_encoder().encode
    assert reader.read("котик", encode).matches[0].name == "кошка"
    assert reader.read("японский флаг", encode).matches[0].name == "флаг Япония"
    blue = reader.read("синий кролик", encode)
    # The colour is read as a word, so the rabbit is found, not «синее сердце».
    assert blue.text() == "кролик · синий" and blue.confident
    assert reader.read("кролик синего цвета", encode).text() == "кролик · синий"


def test_the_reader_loads_the_tokenize_stages_pairs(tmp_path):
    from emojich.train.pairs import CaptionPairs, write_pairs

    encoder = load_encoder()
    (tmp_path / "index.csv").write_text("id,split,caption\ntwemoji-1f408,train,кошка\n", encoding="utf-8")
    captions = ["кошка", "котенок", "синяя кошка"]
    rows = [
        ("train", "twemoji-1f408", c, k, col)
        for c, k, col in zip(captions, ["name", "keyword", "colour"], ["", "", "синий"], strict=True)
    ]
    vectors = encoder.condition(captions).to(torch.float16)
    write_pairs(CaptionPairs(rows, torch.zeros(3, 4, dtype=torch.int32), vectors, {}), tmp_path)
    reader = CaptionReader.load(tmp_path)
    assert reader.captions == ["кошка", "котенок"]  # colour phrases are read by their words
    assert reader.read("котик", encoder.encode).text().startswith("кошка")


def test_a_hopeless_caption_says_so_instead_of_pretending(reader):
    reading = reader.read("квантовая хромодинамика", load_encoder().encode)
    assert not reading.confident
    assert reading.text().startswith("не узнал: ближе всего «")
    assert reading.to_record()["read_as_confident"] is False
    empty = CaptionReader([], [], torch.zeros(0, 512)).read("котик", load_encoder().encode)
    assert empty.text().startswith("нечего сопоставить")


def test_colour_words_are_taken_out_before_matching():
    assert without_colour_words("кролик синего цвета") == "кролик"
    assert without_colour_words("Синяя кошка") == "кошка"


def _drawing(colour: tuple[int, int, int], shape: str, side: int = 32) -> np.ndarray:
    image = np.full((side, side, 3), 255, np.uint8)
    if shape == "square":
        image[6:26, 6:26] = colour
    elif shape == "bar":
        image[12:20, 2:30] = colour
    else:  # a cross
        image[14:18, 4:28] = colour
        image[4:28, 14:18] = colour
    image[6:8, 6:26] = (40, 40, 40)  # a dark stroke: light and dark that hue leaves alone
    return image


def test_recolouring_moves_the_hue_and_keeps_the_drawing():
    red = _drawing((220, 30, 30), "square")
    blue = recolour(red, BY_NAME["синий"].hue)
    hue, share = dominant_hue(blue)
    assert hue is not None and hue_distance(hue, BY_NAME["синий"].hue) < 10 and share > 0.5
    assert np.array_equal(blue[6:8], red[6:8])  # the dark stroke and the white stay
    pair = torch.from_numpy(np.stack([red, blue])).permute(0, 3, 1, 2)
    shapes = shape_features(thumbnails(pair))
    assert torch.allclose(shapes[0], shapes[1], atol=1.0)  # hue-blind: the same drawing
    assert dominant_hue(np.full((8, 8, 3), 128, np.uint8))[0] is None  # grey has no hue


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def test_set_metrics_count_the_intended_emoji_and_the_asked_colour():
    catalogue = [
        _drawing((220, 30, 30), "square"),
        _drawing((30, 160, 40), "bar"),
        _drawing((240, 200, 20), "cross"),
    ]
    reference = Reference.build(
        thumbnails(_tensor(catalogue)),
        ["красный квадрат", "зеленая полоса", "желтый крест"],
        ["train"] * 3,
        emoji=["🟥", "🟩", "✝"],
    )
    phrasings = parse_prompt_set("phrasings", ["квадратик\t🟥", "полоска\t🟩"])
    right = [_tensor([catalogue[0]]), _tensor([catalogue[1]])]
    assert set_metrics(reference, phrasings, right, top_k=1)["phrasings_top1"] == 1.0
    wrong = [_tensor([catalogue[2]]), _tensor([catalogue[0]])]
    assert set_metrics(reference, phrasings, wrong, top_k=1)["phrasings_top1"] == 0.0

    colours = parse_prompt_set("colours", ["синий квадрат\t🟥\tсиний"])
    blue_square = recolour(catalogue[0], BY_NAME["синий"].hue)
    hit = set_metrics(reference, colours, [_tensor([blue_square])], top_k=1)
    assert hit["colours_hit"] == 1.0 and hit["colours_real_hit"] == 1.0
    # The right drawing in its own colour is no hit; a blue drawing of another shape neither.
    assert set_metrics(reference, colours, [_tensor([catalogue[0]])], top_k=1)["colours_hit"] == 0.0
    blue_bar = recolour(catalogue[1], BY_NAME["синий"].hue)
    missed = set_metrics(reference, colours, [_tensor([blue_bar])], top_k=1)
    assert missed["colours_hit"] == 0.0 and missed["colours_hue"] == 1.0


def test_recolour_batch_handles_tensors():
    batch = _tensor([_drawing((220, 30, 30), "square")] * 2)
    out = recolour_batch(batch, [120.0, 230.0])
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert not torch.equal(out[0], out[1])


def _by_reference(slots: int = 6) -> Dalle:
    cfg = dataclasses.replace(
        DalleConfig.preset("tiny-encoder"), memory_keys=slots, memory_slots=slots, reference_codes=True
    )
    torch.manual_seed(0)
    model = Dalle(cfg)
    generator = torch.Generator().manual_seed(3)
    keys = torch.nn.functional.normalize(torch.randn(slots, cfg.condition_dim, generator=generator), dim=1)
    drawings = torch.randint(0, cfg.image_vocab_size, (slots, cfg.image_seq_length), generator=generator)
    model.caption_memory.set_keys(keys, torch.arange(slots), drawings)
    return model


def test_memory_table_keys_names_and_points_every_pair_at_its_emojis_uncoloured_drawing():
    rows = [
        {"split": "train", "id": "a", "caption": "кролик", "kind": "name"},
        {"split": "train", "id": "a", "caption": "зайчик", "kind": "keyword"},
        {"split": "train", "id": "a", "caption": "синий кролик", "kind": "colour"},
        {"split": "train", "id": "b", "caption": "банан", "kind": "name"},
        {"split": "val", "id": "c", "caption": "кошка", "kind": "name"},
    ]
    codes = torch.tensor([[1, 1], [1, 1], [7, 7], [2, 2], [3, 3]])
    vectors = torch.randn(5, 2, 4)
    table = memory_table(rows, codes, vectors)
    assert table.slots == 2 and table.key_slots.tolist() == [0, 0, 1]  # no colour phrase is a key
    assert torch.equal(table.keys, vectors[[0, 1, 3], 0])
    assert table.slot_codes.tolist() == [[1, 1], [2, 2]]  # the uncoloured drawing, not the blue one
    assert table.pair_slots.tolist() == [0, 0, 0, 1, -1]  # held-out emoji have no slot


def test_by_reference_each_position_reads_the_code_it_predicts_and_nothing_after():
    model = _by_reference().eval()
    cfg = model.config
    codes = torch.randint(0, cfg.image_vocab_size, (1, cfg.image_seq_length))
    condition = torch.zeros(1, 2, cfg.condition_dim)
    condition[:, :] = model.caption_memory.keys[2]
    reference = model.drawing_reference(condition)
    assert torch.equal(reference, model.caption_memory.slot_codes[2:3])  # the caption's own drawing
    changed = reference.clone()
    changed[0, 5] = (changed[0, 5] + 1) % cfg.image_vocab_size
    before = model(model.blank_text(1), codes, condition=condition, reference=reference)
    after = model(model.blank_text(1), codes, condition=condition, reference=changed)
    image = cfg.text_positions - 1  # the position predicting code 0
    differs = [
        not torch.allclose(before[0, image + p], after[0, image + p]) for p in range(cfg.image_seq_length)
    ]
    assert differs.index(True) == 5  # positions before the one predicting code 5 never see it
    # A caption-free row (zero vectors, as guidance feeds) reads no drawing.
    assert (model.drawing_reference(torch.zeros(1, 2, cfg.condition_dim)) == -1).all()


def test_a_model_that_draws_by_reference_copies_drawings_it_never_trained_on():
    model = _by_reference()
    cfg, memory = model.config, model.caption_memory
    conditions = memory.keys[:, None, :].expand(-1, 2, -1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(4)
    for _ in range(150):  # every step, new random drawings: it can only learn to copy
        drawings = torch.randint(0, cfg.image_vocab_size, (6, cfg.image_seq_length), generator=generator)
        loss, _ = model(
            model.blank_text(6), drawings, return_loss=True, condition=conditions, reference=drawings
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    kwargs = dict(top_k=1, top_p=1.0, seed=0, progress=False)
    drawn = generate(model, model.blank_text(6), conditions=conditions, **kwargs)
    # Each caption finds its own slot's drawing, which no training step showed, and draws it.
    assert (drawn.codes == memory.slot_codes).float().mean() > 0.9
    assert torch.equal(
        drawn.codes, generate(model, model.blank_text(6), conditions=conditions, **kwargs).codes
    )


def test_reference_draws_follow_the_memorys_weights_and_are_seeded():
    model = _by_reference()
    memory = model.caption_memory
    own = memory.keys[:1]
    assert torch.equal(memory.reference(own, torch.rand(1)), memory.slot_codes[:1])  # a learnt name
    between = torch.nn.functional.normalize(memory.keys[1] + memory.keys[4], dim=0)[None].expand(200, -1)
    picked = memory.reference(between, torch.linspace(0.0025, 0.9975, 200))
    found = {i for i in range(6) for row in picked if torch.equal(row, memory.slot_codes[i])}
    assert found == {1, 4}  # either of the two drawings it reads, in their shares
    assert torch.equal(reference_draws(7, [0, 1, 2]), reference_draws(7, [0, 1, 2]))
    assert not torch.equal(reference_draws(7, [0, 1, 2]), reference_draws(8, [0, 1, 2]))


def test_the_memory_looks_up_the_subject_unless_the_whole_caption_is_a_learnt_name():
    memory = _by_reference().caption_memory
    generator = torch.Generator().manual_seed(9)
    elsewhere = torch.nn.functional.normalize(torch.randn(memory.keys.shape[1], generator=generator), dim=0)
    named = torch.stack([memory.keys[2], elsewhere])[None]  # «синее сердце»: a name with a colour word
    phrase = torch.stack([elsewhere, memory.keys[3]])[None]  # «синий кролик»: its subject is learnt
    assert memory.nearest_slot(memory.query(named)).item() == 2
    assert memory.nearest_slot(memory.query(phrase)).item() == 3


def test_attribute_guidance_reads_one_drawing_and_leaves_plain_captions_alone(monkeypatch):
    model = _by_reference().eval()
    memory = model.caption_memory
    kwargs = dict(images_num=4, top_k=64, top_p=1.0, seed=0, progress=False)
    blank = model.blank_text(1)

    plain = memory.keys[2][None, None, :].expand(1, 2, -1)  # «кролик»: the caption is its subject
    assert torch.equal(
        generate(model, blank, conditions=plain, guidance=3.0, **kwargs).codes,
        generate(model, blank, conditions=plain, guidance=1.0, **kwargs).codes,
    )

    # «синее сердце»: a learnt name with a colour word, whose subject lies elsewhere. The memory
    # finds the name's own drawing; the guided stream must read that drawing too, not the subject's.
    generator = torch.Generator().manual_seed(9)
    elsewhere = torch.nn.functional.normalize(torch.randn(memory.keys.shape[1], generator=generator), dim=0)
    named = torch.stack([memory.keys[2], elsewhere])[None]
    counterpart = model.guidance_counterpart(named)
    assert torch.equal(counterpart, torch.stack([elsewhere, elsewhere])[None])
    assert memory.nearest_slot(memory.query(counterpart)).item() != 2

    read: list[torch.Tensor] = []
    original = Dalle.drawing_reference

    def recording(self, *args, **kw):
        result = original(self, *args, **kw)
        read.append(result)
        return result

    monkeypatch.setattr(Dalle, "drawing_reference", recording)
    guided = generate(model, blank, conditions=named, guidance=3.0, **kwargs)
    both = read[-1]  # what the decoder ran: the conditional rows, then the guided ones
    assert both.shape[0] == 8
    assert torch.equal(both[:4], both[4:])
    assert (both == memory.slot_codes[2]).all()
    monkeypatch.undo()
    assert not torch.equal(
        guided.codes, generate(model, blank, conditions=named, guidance=1.0, **kwargs).codes
    )
