"""Caption tokenizer with ruDALL-E ids, backed by a Hugging Face `tokenizers` BPE model.

ruDALL-E uses a YouTokenToMe (YTTM) BPE model (``bpe.model``). YTTM itself is hard to
install, so `TextTokenizer.from_yttm` reads its plain-text model file into an equivalent
`tokenizers` pipeline:

- text is split on whitespace (YTTM also treats ``▁`` as a space); every word, the first
  included, starts with the word-boundary mark ``▁``;
- BPE merges are applied lowest rule index first, leftmost first on ties (as YTTM does);
- a run of characters missing from the alphabet becomes ONE ``<UNK>`` (id 1), as in YTTM.

Ids: pad 0, unk 1, bos 2, eos 3. `encode` gives ``[2] + ids + [3]`` right-padded with 0 and
cut to the sequence length. Like the published code, the cut happens after eos is appended,
so a caption longer than ``length - 2`` pieces loses its eos.

Trained tokenizers (`TextTokenizer.train`) use character coverage rather than byte fallback
(YTTM's file format has no byte tokens): every character seen in the training captions, plus a
base alphabet (Russian incl. «ё», Latin, digits, punctuation), is in the vocabulary, so emoji
present in the captions round-trip; characters never seen map to ``<UNK>``.
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# Names as in YTTM, listed in id order (the trainer assigns special tokens ids 0, 1, 2, ...).
SPECIAL_TOKENS = ("<PAD>", "<UNK>", "<BOS>", "<EOS>")
WORD_MARK = "▁"  # U+2581, YTTM's SPACE_TOKEN
_SPACE_CODEPOINT = ord(WORD_MARK)

BASE_ALPHABET = (
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
    + string.ascii_lowercase
    + string.digits
    + string.punctuation
    + "«»—–…№"
)


_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_LATIN = re.compile(r"[A-Za-z]")


def is_latin_only(text: str) -> bool:
    """Latin letters and no Cyrillic one: allowed, but the models learnt Russian captions."""
    return bool(_LATIN.search(text)) and not _CYRILLIC.search(text)


def _pipeline(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """The one place where the tokenization rules are set, for loaded and trained models alike."""
    model = models.BPE(vocab=vocab, merges=merges, unk_token=SPECIAL_TOKENS[UNK_ID], fuse_unk=True)
    tokenizer = Tokenizer(model)
    # YTTM splits on ASCII whitespace and on the mark itself; collapsing runs to one space
    # keeps Metaspace from emitting a lone "▁" for a double space, which YTTM never does.
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(f"[ \t\n\v\f\r{WORD_MARK}]+"), " "), normalizers.Strip()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=WORD_MARK, prepend_scheme="always", split=True
    )
    tokenizer.decoder = decoders.Metaspace(replacement=WORD_MARK, prepend_scheme="always", split=True)
    return tokenizer


def _vocab_and_merges(tokenizer: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tokenizer.to_str())["model"]
    # Older `tokenizers` versions store merges as "a b" strings, newer ones as [a, b] pairs.
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges  # type: ignore[return-value]


class TextTokenizer:
    pad_id = PAD_ID
    unk_id = UNK_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, tokenizer: Tokenizer) -> None:
        vocab = tokenizer.get_vocab()
        for token_id, name in enumerate(SPECIAL_TOKENS):
            if vocab.get(name) != token_id:
                raise ValueError(f"tokenizer must map {name} to id {token_id}, got {vocab.get(name)}")
        self._tokenizer = tokenizer
        self._vocab_size = max(vocab.values()) + 1

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_yttm(cls, path: str | os.PathLike[str]) -> TextTokenizer:
        """Read a YouTokenToMe ``bpe.model`` text file.

        Layout: ``n_chars n_rules``; n_chars lines ``codepoint id``; n_rules lines ``x y z``
        (pieces x and y merge into z, in priority order); then ``unk pad bos eos`` ids.
        """
        numbers = [int(word) for word in Path(path).read_text(encoding="utf-8").split()]
        n_chars, n_rules = numbers[0], numbers[1]
        expected = 2 + 2 * n_chars + 3 * n_rules + 4
        if len(numbers) != expected:
            raise ValueError(f"{path}: expected {expected} numbers for {n_chars} chars, {n_rules} rules")
        body = numbers[2:]
        chars = [(body[2 * i], body[2 * i + 1]) for i in range(n_chars)]
        body = body[2 * n_chars :]
        rules = [(body[3 * i], body[3 * i + 1], body[3 * i + 2]) for i in range(n_rules)]
        unk, pad, bos, eos = body[3 * n_rules :]
        if (pad, unk, bos, eos) != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(
                f"{path}: special ids pad={pad} unk={unk} bos={bos} eos={eos}, ruDALL-E needs 0 1 2 3"
            )
        if _SPACE_CODEPOINT not in {codepoint for codepoint, _ in chars}:
            raise ValueError(f"{path}: the alphabet lacks the word mark {WORD_MARK!r}")

        pieces: dict[int, str] = dict(enumerate(SPECIAL_TOKENS))
        for codepoint, token_id in chars:
            pieces[token_id] = chr(codepoint)
        merges = []
        for x, y, z in rules:
            pieces[z] = pieces[x] + pieces[y]
            merges.append((pieces[x], pieces[y]))
        # Two rules could in principle yield the same string; the lower id wins, and the other
        # id is then never produced by encode.
        vocab: dict[str, int] = {}
        for token_id in sorted(pieces):
            vocab.setdefault(pieces[token_id], token_id)
        return cls(_pipeline(vocab, merges))

    @classmethod
    def train(
        cls,
        captions: Iterable[str],
        vocab_size: int,
        min_frequency: int = 2,
        alphabet: str = BASE_ALPHABET,
    ) -> TextTokenizer:
        """Train a BPE on lower-cased, stripped captions with the ruDALL-E special ids.

        Every character of the captions and of `alphabet` is kept (no alphabet limit), so the
        result may be larger than `vocab_size` when the captions use many distinct characters.
        """
        texts = [normalize_caption(text) for text in captions]
        seed = _pipeline({name: i for i, name in enumerate(SPECIAL_TOKENS)}, [])
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=sorted(set(alphabet + WORD_MARK)),
            show_progress=False,
        )
        seed.train_from_iterator(texts, trainer=trainer)
        # Rebuild through _pipeline so a trained model and the same model read back from a
        # yttm file are configured identically.
        return cls(_pipeline(*_vocab_and_merges(seed)))

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save as a Hugging Face tokenizer JSON file."""
        from emojich.foundation.storage import write_text_atomic

        write_text_atomic(path, self._tokenizer.to_str(pretty=True))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(path)))

    def save_yttm(self, path: str | os.PathLike[str]) -> None:
        """Write the YouTokenToMe text format read by `from_yttm` (and by YTTM itself)."""
        from emojich.foundation.storage import write_text_atomic

        vocab, merges = _vocab_and_merges(self._tokenizer)
        specials = set(SPECIAL_TOKENS)
        chars = sorted((ord(piece), token_id) for piece, token_id in vocab.items() if len(piece) == 1)
        rules = [(vocab[a], vocab[b], vocab[a + b]) for a, b in merges]
        covered = {token_id for _, token_id in chars} | {z for _, _, z in rules}
        stray = [
            piece for piece, token_id in vocab.items() if piece not in specials and token_id not in covered
        ]
        if stray:
            raise ValueError(f"tokens that are neither characters nor merges cannot be written: {stray[:5]}")
        lines = [f"{len(chars)} {len(rules)}"]
        lines += [f"{codepoint} {token_id}" for codepoint, token_id in chars]
        lines += [f"{x} {y} {z}" for x, y, z in rules]
        lines.append(f"{UNK_ID} {PAD_ID} {BOS_ID} {EOS_ID}")
        write_text_atomic(path, "\n".join(lines) + "\n")

    # -- use ------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    def tokenize(self, text: str) -> list[int]:
        """BPE ids of a normalized caption, without bos/eos/padding."""
        return self._tokenizer.encode(normalize_caption(text)).ids

    def encode(self, text: str, text_seq_length: int) -> list[int]:
        return self.frame(self.tokenize(text), text_seq_length)

    def encode_batch(self, texts: Sequence[str], text_seq_length: int) -> list[list[int]]:
        encodings = self._tokenizer.encode_batch([normalize_caption(text) for text in texts])
        return [self.frame(encoding.ids, text_seq_length) for encoding in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, skipping special ids and ids beyond the vocabulary.

        The transformer's per-position pad tokens (ids from `vocab_size` up) are skipped too, so a
        generated text row can be decoded as it is.
        """
        kept = [int(i) for i in ids if EOS_ID < int(i) < self._vocab_size]
        return self._tokenizer.decode(kept, skip_special_tokens=False)

    def pieces(self, text: str) -> list[str]:
        """The BPE pieces of a caption (for inspection)."""
        return self._tokenizer.encode(normalize_caption(text)).tokens

    @staticmethod
    def frame(ids: list[int], length: int) -> list[int]:
        """BPE ids -> `[bos] + ids + [eos]`, cut to `length` (eos is lost when cut), right-padded."""
        tokens = [BOS_ID, *ids, EOS_ID][:length]
        return tokens + [PAD_ID] * (length - len(tokens))


def normalize_caption(text: str) -> str:
    """Lower-case and strip, as ruDALL-E does before tokenizing a caption."""
    return text.lower().strip()
