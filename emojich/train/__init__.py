"""Training: the loop every trained model shares (`loop`: optimiser, one-cycle schedule, checkpoints and
resume, DDP) and fine-tuning the text-to-image transformer (`finetune`: freezing, pairs, losses).

May import `emojich.foundation`, `emojich.text` and `emojich.models`.
"""
