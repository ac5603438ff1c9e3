"""One normalisation of what a person types, for every place that compares or encodes captions.

Prompt labels (learnt / held-out / new), training captions, the text encoder's input and the bot all
read a caption through `normalise_caption`, so «  Снеговик! », «снеговик» and «снеговик ⛄» are one
caption everywhere. The published BPE path keeps its own normalisation (`text.bpe`), which the
released tokenizer defines.
"""

from __future__ import annotations

import re
import unicodedata

# Letters (any script), digits, hyphens between them, apostrophes; everything else (punctuation,
# emoji, symbols, variation selectors) is a separator.
_KEEP = re.compile(r"[^\w\s'-]|_", re.UNICODE)


def normalise_caption(text: str) -> str:
    """Case folded, «ё» as «е», emoji and punctuation dropped, hyphens kept inside words, one space."""
    text = unicodedata.normalize("NFC", text).casefold().replace("ё", "е")
    text = _KEEP.sub(" ", text)
    words = [word.strip("-'") for word in text.split()]
    return " ".join(word for word in words if word)
