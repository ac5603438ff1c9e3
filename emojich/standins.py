"""Stand-in weights: seeded random tensors in the published files' containers, keys and names.

The paper profile loads six published files that cannot be downloaded on a build machine.
Their formats are known (`checkpoint-formats.md` in the shared reference), so this module writes
files a published loader reads through exactly the same code as the real ones, filled with
seeded random weights. `full` has the published shapes; `tiny` keeps every container and key
name at small shapes, so CI can run the whole paper path in seconds.

Every stand-in says so in its own metadata, where the loaders pass over it:
- torch files: an entry `emojich_standin` in the state dict's `_metadata`, the per-module table
  `nn.Module.state_dict()` attaches to every state dict (published files carry it too);
- `bpe.model`: YouTokenToMe's format has no metadata field, so its alphabet holds one extra
  private-use character (U+10FFFD) that no caption contains.

`weights_origin` then follows the weights through the pipeline (the metadata of our own
safetensors files and the generation sidecars), and every stage's metrics say `standin`,
`published` or `selftrained`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from emojich.models.origin import STANDIN, STANDIN_CODEPOINT, STANDIN_KEY

SIZES = ("tiny", "full")

DALLE_FILE = "pytorch_model_v3.bin"
VQGAN_FILE = "vqgan.gumbelf8-sber.model.ckpt"
VQGAN_DWT_FILE = "vqgan.gumbelf8-sber-dwt.model.ckpt"
BPE_FILE = "bpe.model"
REALESRGAN_FILE = "RealESRGAN_x4.pth"
UNET_FILE = "unet_effnetb5/pytorch_model_v2.bin"
FILES = (DALLE_FILE, VQGAN_FILE, VQGAN_DWT_FILE, BPE_FILE, REALESRGAN_FILE, UNET_FILE)

# Which preset of each loader reads the files of each size (the paper profile's names at full size).
PRESETS: dict[str, dict[str, str]] = {
    "full": {"dalle": "malevich", "vqgan": "sber-dwt", "unet": "published-b5"},
    "tiny": {"dalle": "malevich-tiny", "vqgan": "sber-dwt-tiny", "unet": "published-b5-tiny"},
}
BPE_TOKENS = {"full": 16384, "tiny": 256}
# Real-ESRGAN x4 at tiny size: the published 23 blocks (so the same keys), thin convolutions.
RRDBNET_TINY = {"num_feat": 8, "num_block": 23, "num_grow_ch": 4}


# -- the files ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StandinSpec:
    size: str = "tiny"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, got {self.size!r}")

    def marker(self, kind: str) -> dict[str, str]:
        return {
            "origin": STANDIN,
            "kind": kind,
            "size": self.size,
            "seed": str(self.seed),
            "note": "seeded random weights in the published layout; not the published model",
        }


def _marked(state: dict[str, torch.Tensor], spec: StandinSpec, kind: str) -> dict[str, torch.Tensor]:
    marked = OrderedDict(state)
    marked._metadata = OrderedDict({STANDIN_KEY: spec.marker(kind)})  # type: ignore[attr-defined]
    return marked


def _seeded(build, seed: int) -> nn.Module:
    """Build a module under `seed` without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _save(obj: object, dest: Path) -> None:
    from emojich.foundation.storage import atomic_path

    dest.parent.mkdir(parents=True, exist_ok=True)
    # Through a file object: given a path, torch names the archive's folder after it, and the
    # temporary name would make every run's bytes differ.
    with atomic_path(dest) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)


def write_dalle(dest: Path, spec: StandinSpec) -> None:
    """`pytorch_model_v3.bin`: a raw state dict of the Malevich transformer."""
    from emojich.models.dalle import Dalle, DalleConfig

    config = DalleConfig.preset(PRESETS[spec.size]["dalle"])
    model = _seeded(lambda: Dalle(config), spec.seed)
    _save(_marked(model.state_dict(), spec, "dalle"), dest)
    del model


def write_vqgan(dest: Path, spec: StandinSpec, dwt: bool) -> None:
    """taming's `{'state_dict': ...}`; the DWT file's keys carry the outer module's `model.` prefix."""
    from emojich.models.vqgan import DWT_CHECKPOINT_PREFIX, VQGan, VQGanConfig

    name = PRESETS[spec.size]["vqgan"]
    config = VQGanConfig.preset(name if dwt else name.replace("-dwt", ""))
    # One seed for both files: the published pair shares its encoder and codebook.
    model = _seeded(lambda: VQGan(config), spec.seed + 1)
    state = model.state_dict()
    if dwt:
        state = {DWT_CHECKPOINT_PREFIX + key: value for key, value in state.items()}
    _save({"state_dict": _marked(state, spec, "vqgan-dwt" if dwt else "vqgan")}, dest)


def write_realesrgan(dest: Path, spec: StandinSpec) -> None:
    """`RealESRGAN_x4.pth`: the state dict under `params_ema`, as Real-ESRGAN releases it."""
    from emojich.models.rrdbnet import PRESETS as RRDB_PRESETS
    from emojich.models.rrdbnet import RRDBNet, RRDBNetConfig

    config = RRDB_PRESETS["realesrgan-x4"] if spec.size == "full" else RRDBNetConfig(**RRDBNET_TINY)
    model = _seeded(lambda: RRDBNet(config), spec.seed + 2)
    _save({"params_ema": _marked(model.state_dict(), spec, "realesrgan-x4")}, dest)


def write_unet(dest: Path, spec: StandinSpec) -> None:
    """`unet_effnetb5/pytorch_model_v2.bin`: the raw state dict of smp's EfficientNet-B5 U-Net."""
    from emojich.segment.unet import build_unet, preset

    model = build_unet(preset(PRESETS[spec.size]["unet"]), seed=spec.seed + 3)
    _save(_marked(model.state_dict(), spec, "unet-effnetb5"), dest)


def write_bpe(dest: Path, spec: StandinSpec) -> None:
    """`bpe.model` in YouTokenToMe's text format: the base alphabet and seeded random merges.

    Written by hand: no maintained package writes this format (`youtokentome` does not build on
    current Python), and a stand-in needs a vocabulary of the exact published size, which
    training on some corpus does not guarantee. Merges join two existing pieces, and the word
    mark only ever starts a piece, as in a trained model.
    """
    from emojich.text.bpe import BASE_ALPHABET, SPECIAL_TOKENS, WORD_MARK, TextTokenizer, _pipeline

    rng = random.Random(spec.seed)
    alphabet = [*sorted(set(WORD_MARK + BASE_ALPHABET)), chr(STANDIN_CODEPOINT)]
    vocab = {name: index for index, name in enumerate(SPECIAL_TOKENS)}
    for char in alphabet:
        vocab[char] = len(vocab)
    pieces = [char for char in alphabet if char != chr(STANDIN_CODEPOINT)]
    merges: list[tuple[str, str]] = []
    while len(vocab) < BPE_TOKENS[spec.size]:
        left, right = rng.choice(pieces), rng.choice(pieces)
        merged = left + right
        if right.startswith(WORD_MARK) or merged in vocab:
            continue
        vocab[merged] = len(vocab)
        merges.append((left, right))
        pieces.append(merged)
    dest.parent.mkdir(parents=True, exist_ok=True)
    TextTokenizer(_pipeline(vocab, merges)).save_yttm(dest)


def write_standins(folder: str | os.PathLike[str], spec: StandinSpec) -> dict[str, str]:
    """Write all six files under their published names; returns {name: sha256}."""
    from emojich.foundation.storage import sha256_file

    folder = Path(folder)
    # Largest last at full size, so a short disk fails before the long write.
    write_bpe(folder / BPE_FILE, spec)
    write_vqgan(folder / VQGAN_FILE, spec, dwt=False)
    write_vqgan(folder / VQGAN_DWT_FILE, spec, dwt=True)
    write_realesrgan(folder / REALESRGAN_FILE, spec)
    write_unet(folder / UNET_FILE, spec)
    write_dalle(folder / DALLE_FILE, spec)
    return {name: sha256_file(folder / name) for name in FILES}


def main(folder: str, size: str, seed: int) -> int:
    """The `emojich standin-weights` command (arguments already validated)."""
    spec = StandinSpec(size, seed)
    hashes = write_standins(folder, spec)
    print(json.dumps({"folder": str(folder), "size": size, "seed": seed, "files": hashes}, indent=2))
    return 0
