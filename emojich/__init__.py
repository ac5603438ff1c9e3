"""Emojich: Russian captions to emoji stickers.

The library knows nothing about DVC or Prefect: `stages/` and `flows/` call into it.
"""

__version__ = "0.1.0"
