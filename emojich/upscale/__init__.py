"""Upscaling emoji to the training resolution (the upscale stage): RRDBNet x4 then an exact resize,
and the demo's self-trained RRDBNet.

May import `emojich.foundation` and `emojich.models`.
"""
