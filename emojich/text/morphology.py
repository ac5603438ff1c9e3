"""Russian morphology through pymorphy3 (OpenCorpora dictionaries): lemmas, the head noun of a
caption, and inflecting words to agree with it.

Used to make training captions a person would type («флаг Японии» beside CLDR's «флаг Япония»,
«синяя кошка» but «синий кролик»), and to find colour words in a prompt whatever their form.
"""

from __future__ import annotations

from functools import cache

import pymorphy3

from emojich.text.normalise import normalise_caption


@cache
def analyzer() -> pymorphy3.MorphAnalyzer:
    return pymorphy3.MorphAnalyzer(lang="ru")


def _parse(word: str):
    return analyzer().parse(word)[0]


def lemmas(text: str) -> list[str]:
    """Dictionary forms of the words of a caption, normalised («синего» -> «синий»)."""
    return [normalise_caption(_parse(word).normal_form) for word in normalise_caption(text).split()]


def head_noun(caption: str):
    """The parse of a caption's first noun in the nominative (the thing the caption names), or None.

    «красное яблоко» -> яблоко; «кролик» -> кролик; «широко улыбается» -> None.
    """
    for word in caption.split():
        parses = analyzer().parse(word)
        if parses[0].tag.POS != "NOUN":
            continue  # adjectives and adverbs before the noun («красное яблоко»)
        return next((p for p in parses if p.tag.POS == "NOUN" and p.tag.case == "nomn"), None)
    return None


def agree(adjective: str, noun) -> str | None:
    """`adjective` (dictionary form) in the gender and number of `noun`, nominative, or None."""
    parse = next((p for p in analyzer().parse(adjective) if p.tag.POS == "ADJF"), None)
    if parse is None:
        return None
    if noun.tag.number == "plur" or "Pltm" in noun.tag:
        wanted = {"plur", "nomn"}
    else:
        wanted = {noun.tag.gender or "masc", "sing", "nomn"}
    form = parse.inflect(wanted)
    return form.word if form else None


def genitive(phrase: str) -> str | None:
    """Every noun and adjective of `phrase` in the genitive («Япония» -> «японии»), or None."""
    words = []
    for word in phrase.split():
        parse = _parse(word)
        if parse.tag.POS in ("NOUN", "ADJF", "PRTF") and parse.tag.case == "nomn":
            form = parse.inflect({"gent"})
            if form is None:
                return None
            words.append(form.word)
        else:
            words.append(word)
    return " ".join(words)
