"""Emojich: Russian captions to emoji stickers.

One sub-package per part of the pipeline, in the order data flows, over one foundation:

    foundation   storage, shards, layout, records, progress, logs, params, device, distributed
    text         the BPE tokenizer
    data         the catalogue (scrape), image normalisation and splits (prepare)
    models       the transformer, image tokenizer, upscaler; checkpoint formats; weight origins
    fidelity     measures of what is drawn that do not ask the generator
    upscale      RRDBNet x4 super-resolution and its self-training (upscale)
    train        the shared training loop and transformer fine-tuning (finetune)
    generate     prompts, sampling, cells, rendering, records, sheets (generate)
    segment      U-Net, pseudo-labels, contour fallback, stickers (segment, stickers)
    lineage      from a sticker back to its sources
    bot          the Telegram bot

A part imports only the foundation and the parts listed above it (`tests/test_layering.py`).
`cli` and `standins` (stand-in weights in the published formats) sit on top. The library knows
nothing about DVC or Prefect: `stages/` and `flows/` call into it.
"""

__version__ = "0.1.0"
