"""Lineage: from any sticker or generated image back to its prompt, seed, checkpoint, training data
and each training image's source (`emojich lineage`).

May import `emojich.foundation` and `emojich.models`.
"""
