"""The paper profile with only what size and time force overridden, over stand-in weights.

Shared by the CI test (tiny stand-ins) and `benchmarks/paper_dry_run.sh` (full stand-ins):
- data: the offline catalogue, a few emoji, since nothing may reach the network;
- weights: the stand-ins' paths, and at tiny size the presets that read their small shapes;
- step, attempt and prompt counts;
- device: cpu; fp16 needs a GPU, so training runs in fp32 (the dtype the CPU computes fastest);
- segment starts from the published B5 file, the profile's documented start for the report's
  U-Net, so the published U-Net loader is on the path too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emojich import standins

PROFILE = "profiles/paper.yaml"


def paper_overrides(weights: Path, size: str, prompts: str = "prompts/appendix.txt") -> dict[str, Any]:
    presets = standins.PRESETS[size]
    tiny = size == "tiny"
    return {
        "scrape": {
            "source": "offline",
            "offline": {"styles": ["twemoji", "openmoji"], "max_emoji": 8 if tiny else 6, "render_size": 64},
        },
        "prepare": {"val_fraction": 0.25, "workers": 0},
        "upscale": {
            "weights": str(weights / standins.REALESRGAN_FILE),
            "batch_size": 16 if tiny else 4,
            "eval_images": 4,
            "threads": 1,
            "device": "cpu",
        },
        "tokenize": {
            "image": {"preset": presets["vqgan"], "weights": str(weights / standins.VQGAN_DWT_FILE)},
            "text": {"bpe_model": str(weights / standins.BPE_FILE)},
            "grid_images": 4,
        },
        "finetune": {
            "model": {"preset": presets["dalle"], "weights": str(weights / standins.DALLE_FILE)},
            "device": "cpu",
            # Full size trains batch 1: batch 2 of 1,152 tokens at 1.3B keeps ~15 GB of activations
            # in fp32, more than a shared 23 GB machine has to spare.
            "train": {
                "max_steps": 4 if tiny else 2,
                "precision": "fp32",
                "checkpoint_every": 2,
                **({} if tiny else {"batch_size": 1}),
            },
            "eval": {
                "every": 0,
                "images_per_prompt": 2 if tiny else 1,
                # no validation forwards at full size: minutes each on a CPU, and nothing to learn
                "max_val_pairs": 4 if tiny else 0,
                "caption_pairs": 2,
                "caption_candidates": 2,
            },
        },
        "generate": {
            "prompts": prompts,
            "attempts": 2 if tiny else 1,
            "keep_best": 1,
            "threads": 1,
            "device": "cpu",
        },
        "segment": {
            "preset": presets["unet"],
            "init_weights": str(weights / standins.UNET_FILE),
            "max_train_images": 4,
            "pseudolabel": {
                "max_rounds": 1,
                "steps_initial": 2 if tiny else 1,
                "steps_per_round": 1,
                "batch_size": 2,
                "predict_batch_size": 4 if tiny else 2,
            },
        },
    }
