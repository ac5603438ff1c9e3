"""One point of the sampling grid: its values, checked before any model loads, and its folder name."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SamplingCell:
    """One point of the sampling grid; invalid values fail here, before any model is loaded."""

    top_k: int
    top_p: float
    temperature: float
    seed: int
    # Classifier-free guidance scale (1 = off, the report's sampler). A stage parameter rather
    # than an axis of the grid, so it is not part of the cell's name.
    guidance: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not self.guidance >= 1.0:
            raise ValueError(f"guidance must be >= 1 (1 = off), got {self.guidance!r}")

    @property
    def name(self) -> str:
        """Folder name of the cell; matches the `k${item.top_k}-p...` out path of dvc.yaml."""
        return f"k{self.top_k}-p{self.top_p}-t{self.temperature}-s{self.seed}"

    def clamped(self, image_vocab_size: int) -> tuple[SamplingCell, str | None]:
        """top_k above the image vocabulary means "no top-k filter": clamp it and say so.

        This lets the published defaults (top_k 2048) run on the demo model (512 codes).
        """
        if self.top_k <= image_vocab_size:
            return self, None
        note = f"top_k {self.top_k} > image vocabulary {image_vocab_size}: clamped to {image_vocab_size}"
        return dataclasses.replace(self, top_k=image_vocab_size), note
