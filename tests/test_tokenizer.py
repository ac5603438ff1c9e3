"""Caption tokenizer: ruDALL-E ids and framing, training, HF JSON and YTTM round trips."""

from __future__ import annotations

import random

import pytest

from emojich.text.bpe import TextTokenizer

_VOCABULARY = (
    "улыбающееся лицо с сердечками кот ёжик ёлка смеётся плачет красное сердце огонь звезда "
    "большой маленький синий зелёный флаг россии кнопка ok 100 очков эйнштейн улыбается"
)
WORDS = _VOCABULARY.split()
EMOJI = ("😀", "🐱", "❤️", "🔥", "🇷🇺")


def _captions(count: int = 600, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    captions = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(2, 6))
        if rng.random() < 0.3:
            words.append(rng.choice(EMOJI))
        captions.append(" ".join(words))
    return captions


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(_captions(), vocab_size=300)


def test_special_ids_and_framing(tokenizer: TextTokenizer) -> None:
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    ids = tokenizer.encode("кот", 8)
    body = tokenizer.tokenize("кот")
    assert ids == [2, *body, 3] + [0] * (8 - len(body) - 2)
    assert all(3 < i < tokenizer.vocab_size for i in body)


def test_long_caption_is_cut_and_loses_eos(tokenizer: TextTokenizer) -> None:
    text = " ".join(WORDS)
    ids = tokenizer.encode(text, 6)
    assert len(ids) == 6
    assert ids[0] == 2 and 3 not in ids and 0 not in ids
    assert ids[1:] == tokenizer.tokenize(text)[:5]


def test_lower_case_and_strip(tokenizer: TextTokenizer) -> None:
    assert tokenizer.encode("  Ёжик СМЕЁТСЯ \n", 16) == tokenizer.encode("ёжик смеётся", 16)
    assert tokenizer.encode("ёжик   смеётся", 16) == tokenizer.encode("ёжик смеётся", 16)


@pytest.mark.parametrize(
    "text",
    ["улыбающееся лицо с сердечками", "ёжик и ёлка", "кнопка ok 100 очков", "🔥 огонь 🇷🇺 ❤️", "кот😀"],
)
def test_round_trip(tokenizer: TextTokenizer, text: str) -> None:
    ids = tokenizer.encode(text, 64)
    assert 1 not in ids  # every character was seen in training: nothing is unknown
    assert tokenizer.decode(ids) == text


def test_unknown_characters_become_one_unk(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.tokenize("кот ☃☃☃")
    assert ids.count(1) == 1
    assert tokenizer.decode(tokenizer.encode("кот ☃☃☃", 16)).startswith("кот")


def test_decode_skips_position_pad_tokens(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("кот", 8)
    shifted = [tokenizer.vocab_size + i if token == 0 else token for i, token in enumerate(ids)]
    assert tokenizer.decode(shifted) == "кот"


def test_encode_batch_matches_encode(tokenizer: TextTokenizer) -> None:
    texts = _captions(20, seed=1)
    assert tokenizer.encode_batch(texts, 24) == [tokenizer.encode(text, 24) for text in texts]


def test_json_round_trip(tokenizer: TextTokenizer, tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    loaded = TextTokenizer.load(path)
    assert loaded.vocab_size == tokenizer.vocab_size
    for text in _captions(100, seed=2):
        assert loaded.encode(text, 32) == tokenizer.encode(text, 32)


def test_yttm_round_trip(tokenizer: TextTokenizer, tmp_path) -> None:
    path = tmp_path / "bpe.model"
    tokenizer.save_yttm(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    n_chars, n_rules = map(int, lines[0].split())
    assert len(lines) == 1 + n_chars + n_rules + 1
    assert lines[-1] == "1 0 2 3"  # unk pad bos eos, as YTTM writes them
    assert f"{ord('▁')} " in "\n".join(lines[1 : 1 + n_chars])
    loaded = TextTokenizer.from_yttm(path)
    assert loaded.vocab_size == tokenizer.vocab_size == n_chars + n_rules + 4
    for text in [*_captions(200, seed=3), "кот ☃☃ ёлка", "неизвестное слово"]:
        assert loaded.encode(text, 48) == tokenizer.encode(text, 48)


def test_from_yttm_hand_written(tmp_path) -> None:
    # Alphabet ▁ к о т, merges: к+о, ко+т, ▁+кот; specials in YTTM order (unk pad bos eos).
    path = tmp_path / "bpe.model"
    path.write_text("4 3\n9601 4\n1082 5\n1086 6\n1090 7\n5 6 8\n8 7 9\n4 9 10\n1 0 2 3\n", encoding="utf-8")
    tokenizer = TextTokenizer.from_yttm(path)
    assert tokenizer.vocab_size == 11
    assert tokenizer.tokenize("кот") == [10]
    assert tokenizer.tokenize("Кот кот") == [10, 10]
    assert tokenizer.tokenize("ток") == [4, 7, 6, 5]  # no rule applies
    assert tokenizer.tokenize("кокот") == [4, 8, 9]  # ▁ ко кот: "▁"+"ко" has no rule
    assert tokenizer.tokenize("кот 🐱котX") == [10, 4, 1, 9, 1]  # unknown runs -> one unk each
    assert tokenizer.decode([2, 10, 10, 3, 0]) == "кот кот"


def test_from_yttm_rejects_other_special_ids(tmp_path) -> None:
    path = tmp_path / "bpe.model"
    path.write_text("1 0\n9601 4\n0 1 2 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="special ids"):
        TextTokenizer.from_yttm(path)
