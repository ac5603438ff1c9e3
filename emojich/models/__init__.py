"""Models: the ruDALL-E-compatible transformer, the image tokenizer (VQGAN and quantizers), the
RRDBNet upscaler, their published checkpoint formats, and where each weights file came from.

May import `emojich.foundation` only.
"""
