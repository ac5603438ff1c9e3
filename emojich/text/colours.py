"""Colour words: eight hues, their Russian adjectives, and phrases that agree with a noun.

The demo learns colour as an attribute from recoloured images (`emojich.data.recolour`) captioned
with these phrases, in the two shapes people write: «синий кролик» and «кролик синего цвета».
"""

from __future__ import annotations

import dataclasses

from emojich.text.morphology import agree, head_noun, lemmas
from emojich.text.normalise import normalise_caption


@dataclasses.dataclass(frozen=True)
class Colour:
    name: str  # dictionary form, «е» for «ё» (as `normalise_caption` writes it)
    hue: float  # degrees on the HSV wheel
    genitive: str  # for «... синего цвета»


COLOURS = (
    Colour("красный", 0.0, "красного"),
    Colour("оранжевый", 28.0, "оранжевого"),
    Colour("желтый", 52.0, "желтого"),
    Colour("зеленый", 120.0, "зеленого"),
    Colour("голубой", 195.0, "голубого"),
    Colour("синий", 230.0, "синего"),
    Colour("фиолетовый", 275.0, "фиолетового"),
    Colour("розовый", 325.0, "розового"),
)
BY_NAME = {colour.name: colour for colour in COLOURS}


def hue_distance(a: float, b: float) -> float:
    """Degrees between two hues around the wheel (0 to 180)."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def nearest_colour(hue: float) -> Colour:
    return min(COLOURS, key=lambda colour: hue_distance(colour.hue, hue))


# Colour adjectives a catalogue name may already carry («красное яблоко», «алое сердце»): a new colour
# replaces them rather than contradicting them.
_OTHER_COLOUR_WORDS = frozenset({"алый", "белый", "черный", "серый", "коричневый", "светлый", "темный"})


def colour_phrases(caption: str, colour: Colour) -> list[str]:
    """«синий кролик», «кролик синего цвета» for a caption whose head is a noun; [] otherwise.

    The adjective agrees with the head noun («синяя кошка», «синее яблоко», «синие ножницы»). A
    colour the name already has is replaced («красное яблоко» -> «синее яблоко»), other words
    before the noun are kept («синяя новогодняя елка»).
    """
    noun = head_noun(caption)
    adjective = agree(colour.name, noun) if noun is not None else None
    if adjective is None:
        return []
    colour_words = BY_NAME.keys() | _OTHER_COLOUR_WORDS
    kept = [word for word in caption.split() if not colour_words.intersection(lemmas(word))]
    rest = " ".join(kept)
    return [f"{adjective} {rest}", f"{rest} {colour.genitive} цвета"]


def colours_in(text: str) -> list[Colour]:
    """The colour words of a prompt, in any form («синего», «синяя» -> синий)."""
    found = []
    for lemma in lemmas(text):
        colour = BY_NAME.get(lemma)
        if colour is not None and colour not in found:
            found.append(colour)
    return found


def without_colour_words(prompt: str) -> str:
    """The prompt less its colour words and «цвета»: «кролик синего цвета» -> «кролик»."""
    colour_lemmas = {colour.name for colour in colours_in(prompt)} | {"цвет"}
    words = normalise_caption(prompt).split()
    return " ".join(word for word in words if not colour_lemmas.intersection(lemmas(word)))
