"""Background segmentation and stickers (the segment and stickers stages): the U-Net, its pseudo-labelling
rounds, the contour fallback, and 512 px RGBA stickers that meet Telegram's rules.

May import `emojich.foundation`, `emojich.models` and `emojich.train`.
"""

from emojich.segment.contour import ContourConfig, contour_alpha
from emojich.segment.masking import MaskResult, segment_images
from emojich.segment.metrics import boundary_f_score, iou, mask_scores
from emojich.segment.unet import UnetConfig, build_unet, load_published, load_unet, predict, preset

__all__ = [
    "ContourConfig",
    "MaskResult",
    "UnetConfig",
    "boundary_f_score",
    "build_unet",
    "contour_alpha",
    "iou",
    "load_published",
    "load_unet",
    "mask_scores",
    "predict",
    "preset",
    "segment_images",
]
