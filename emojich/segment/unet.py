"""The background-segmentation U-Net: presets, loading, batched prediction.

The network itself is segmentation-models-pytorch's `Unet`; this module only fixes how it is
built and fed. Conventions follow the published Emojich release: inputs resized to the config's
side and scaled to [0, 1] *without* ImageNet normalisation, two classes (0 transparent,
1 opaque) with a softmax, and an image's confidence is the mean over pixels of the per-pixel
maximum class probability.

Encoders are always built with `encoder_weights=None`: nothing here downloads anything. Weights
come from files on disk (ours as safetensors, the published B5 as a torch `.bin`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from emojich.models.checkpoints import load_state_dict_strict, read_state_dict, save_safetensors


@dataclasses.dataclass
class UnetConfig:
    encoder: str = "efficientnet-b7"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    classes: int = 2  # 2 = softmax over (transparent, opaque); 1 = sigmoid (the earlier B7 variant)
    in_channels: int = 3
    size: int = 512  # square side the network sees; predictions are resized back to the input

    def __post_init__(self) -> None:
        self.decoder_channels = tuple(self.decoder_channels)  # YAML and JSON give lists
        if len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(
                f"decoder_channels needs one entry per encoder stage ({self.encoder_depth}), "
                f"got {len(self.decoder_channels)}"
            )
        if self.classes not in (1, 2):
            raise ValueError(f"classes must be 1 (sigmoid) or 2 (softmax), got {self.classes}")
        # Every encoder stage halves the side; the decoder needs it to divide evenly.
        if self.size % (1 << self.encoder_depth):
            raise ValueError(f"size {self.size} is not a multiple of 2**encoder_depth")


PRESETS: dict[str, UnetConfig] = {
    # The report: EfficientNet-B7 encoder, trained here (no pretrained weights are fetched).
    "paper": UnetConfig(encoder="efficientnet-b7"),
    # What the published code ships: pytorch_model_v2.bin loads strictly into this.
    "published-b5": UnetConfig(encoder="efficientnet-b5"),
    # The published B5 at a small side and decoder, for `emojich standin-weights --size tiny`.
    # EfficientNet's key names encode its depth, so no smaller encoder has the published keys.
    "published-b5-tiny": UnetConfig(
        encoder="efficientnet-b5", decoder_channels=(16, 16, 16, 16, 16), size=64
    ),
    # Laptop profile. At 128 px on 2 CPU cores the MobileNetV3 encoders (timm) trained and predicted
    # several times faster than resnet18, mobilenet_v2 and efficientnet-b0; Large was no slower
    # than Small in those measurements and has more capacity.
    "demo": UnetConfig(
        encoder="tu-mobilenetv3_large_100", encoder_depth=4, decoder_channels=(64, 32, 16, 8), size=128
    ),
    # Unit tests only: the same family at the smallest useful depth and side.
    "tiny": UnetConfig(
        encoder="tu-mobilenetv3_small_100", encoder_depth=3, decoder_channels=(16, 8, 8), size=32
    ),
}


def preset(name: str) -> UnetConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; known: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


def build_unet(config: UnetConfig, seed: int | None = None) -> nn.Module:
    """A randomly initialised U-Net; with `seed`, the same weights every time (caller's RNG untouched)."""
    # Imported here: smp pulls in timm and takes seconds to import, which the contour path never needs.
    import segmentation_models_pytorch as smp

    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return smp.Unet(
            encoder_name=config.encoder,
            encoder_depth=config.encoder_depth,
            encoder_weights=None,
            decoder_channels=config.decoder_channels,
            in_channels=config.in_channels,
            classes=config.classes,
        )


def load_published(path: str | os.PathLike[str], preset_name: str = "published-b5") -> nn.Module:
    """The published `unet_effnetb5/pytorch_model_v2.bin`, loaded strictly into the B5 U-Net."""
    model = build_unet(preset(preset_name))
    load_state_dict_strict(model, read_state_dict(path, wrappers=("state_dict", "model")), source=str(path))
    return model.eval()


_CONFIG_KEY = "unet_config"


def save_unet(
    model: nn.Module, config: UnetConfig, path: str | os.PathLike[str], extra: dict[str, str] | None = None
) -> None:
    """Safetensors with the config in its metadata, so the file alone says how to rebuild the model."""
    metadata = {**(extra or {}), _CONFIG_KEY: json.dumps(dataclasses.asdict(config), sort_keys=True)}
    save_safetensors(model, path, metadata=metadata)


def read_unet_config(path: str | os.PathLike[str]) -> UnetConfig | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        stored = (handle.metadata() or {}).get(_CONFIG_KEY)
    return UnetConfig(**json.loads(stored)) if stored else None


def load_unet(path: str | os.PathLike[str], preset_name: str = "demo") -> tuple[nn.Module, UnetConfig]:
    """Load weights from `path`: a published `.bin` for preset `published-b5`, else our safetensors.

    A safetensors file written by `save_unet` carries its own config, which wins over the preset
    (a mismatch would otherwise only show up as a wall of shape errors).
    """
    path = Path(path)
    if preset_name.startswith("published-b5") and path.suffix != ".safetensors":
        return load_published(path, preset_name), preset(preset_name)
    config = (read_unet_config(path) if path.suffix == ".safetensors" else None) or preset(preset_name)
    model = build_unet(config)
    load_state_dict_strict(model, read_state_dict(path, wrappers=("state_dict", "model")), source=str(path))
    return model.eval(), config


# -- prediction ------------------------------------------------------------------------------------


def as_uint8_batch(images: np.ndarray | Sequence[Image.Image] | Sequence[np.ndarray]) -> np.ndarray:
    """[N, H, W, 3] uint8 from an array or a list of same-sized PIL images / arrays."""
    if isinstance(images, np.ndarray):
        batch = images
    else:
        arrays = [np.asarray(i.convert("RGB")) if isinstance(i, Image.Image) else i for i in images]
        sizes = {a.shape[:2] for a in arrays}
        if len(sizes) > 1:
            raise ValueError(f"images must share one size to be batched, got {sorted(sizes)}")
        batch = np.stack(arrays) if arrays else np.zeros((0, 1, 1, 3), np.uint8)
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {batch.dtype} {batch.shape}")
    return batch


def to_network_input(batch: np.ndarray, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, size, size] in [0, 1] (no ImageNet normalisation)."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float() / 255
    if tensor.shape[-2:] != (size, size):
        # antialias matters when shrinking 512 px images to a small network side: without it
        # thin outlines alias away and the mask loses them.
        tensor = F.interpolate(
            tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return tensor


def foreground_and_confidence(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, C, H, W] -> (P(opaque) [N, H, W], confidence [N]).

    Confidence is the published definition: mean over pixels of the largest class probability.
    """
    if logits.shape[1] == 1:
        foreground = torch.sigmoid(logits[:, 0])
        top = torch.maximum(foreground, 1 - foreground)
    else:
        probs = torch.softmax(logits, dim=1)
        foreground = probs[:, 1]
        top = probs.max(dim=1).values
    return foreground, top.flatten(1).mean(dim=1)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def predict(
    model: nn.Module,
    images: np.ndarray | Sequence[Image.Image] | Sequence[np.ndarray],
    batch_size: int = 16,
    size: int = 512,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(P(opaque) float32 [N, H, W] at the input size, confidence float32 [N]).

    `size` is the side the network sees (the config's `size`); confidence is measured there,
    as the published code does, and the probabilities are then resized back to the input.
    """
    batch = as_uint8_batch(images)
    count, height, width = batch.shape[:3]
    device = torch.device(device) if device is not None else _device_of(model)
    probs = np.zeros((count, height, width), np.float32)
    confidence = np.zeros(count, np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, count, batch_size):
                chunk = to_network_input(batch[start : start + batch_size], size, device)
                foreground, conf = foreground_and_confidence(model(chunk))
                if foreground.shape[-2:] != (height, width):
                    foreground = F.interpolate(
                        foreground[:, None], size=(height, width), mode="bilinear", align_corners=False
                    )[:, 0]
                probs[start : start + len(chunk)] = foreground.clamp_(0, 1).float().cpu().numpy()
                confidence[start : start + len(chunk)] = conf.float().cpu().numpy()
    finally:
        model.train(was_training)
    return probs, confidence


def predict_many(
    model: nn.Module,
    images: Sequence[np.ndarray],
    batch_size: int = 16,
    size: int = 512,
    device: torch.device | str | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """`predict` over images of mixed sizes: batched within each size, results in input order."""
    probs: list[np.ndarray | None] = [None] * len(images)
    confidence = np.zeros(len(images), np.float32)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(index)
    for indices in by_shape.values():
        group_probs, group_conf = predict(
            model, np.stack([images[i] for i in indices]), batch_size, size, device
        )
        confidence[indices] = group_conf
        for position, index in enumerate(indices):
            probs[index] = group_probs[position]
    return probs, confidence  # type: ignore[return-value]
