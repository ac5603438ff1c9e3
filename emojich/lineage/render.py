"""Lineage for a person: one line per link of the chain, breaks marked, a verdict at the end.

A line says what a person checks first (what the file is, how it was made, whether it verifies)
and summarises the rest: a stage's parameters and outputs are counted, not listed, and long
lists are cut to their first few items. `emojich lineage --json` has every value in full.
"""

from __future__ import annotations

from typing import Any

from emojich.lineage.trace import Lineage, Link

TITLE_WIDTH = 16  # "generated image" and "training data" fit
MAX_TEXT = 48  # characters of a free-text value (a prompt) before it is cut
MAX_ITEMS = 3  # items of a list shown before "+N more"


def render_text(lineage: Lineage) -> str:
    """A human-readable chain, one line per link, each break's reason on the line below it."""
    lines = [f"lineage of {lineage.target}", ""]
    for link in lineage.links:
        mark = "ok   " if link.ok else "BREAK"
        parts = [f"{mark} {link.title:<{TITLE_WIDTH}}"]
        if link.path:
            parts.append(link.path)
        if link.sha256:
            parts.append(f"sha256 {link.sha256[:12]}")
        summary = summarise(link)
        if summary:
            parts.append(f"· {summary}")
        lines.append("  ".join(parts))
        if link.problem:
            lines.append(f"{'':6}{'':{TITLE_WIDTH}}  ↳ {link.problem}")
    verdict = (
        f"verified end to end ({len(lineage.links)} links)"
        if not lineage.breaks
        else f"{len(lineage.breaks)} break(s): {', '.join(lineage.break_kinds)}"
    )
    lines += ["", f"{verdict}; --json gives every value in full"]
    return "\n".join(lines)


def summarise(link: Link) -> str:
    """The facts of one link as a short phrase."""
    facts = {key: value for key, value in link.facts.items() if value not in (None, {}, [])}
    phrase = _PHRASES.get(link.kind, _generic)(facts)
    return phrase


def _sticker(facts: dict[str, Any]) -> str:
    parts = [f"cut by {facts.pop('made_by', 'its maker')}"]
    method = facts.pop("mask_method", None)
    if method:
        confidence = facts.pop("confidence", None)
        parts.append(f"{method} mask" + (f" (confidence {confidence:.4f})" if confidence is not None else ""))
    if "sticker_format" in facts:
        parts.append(str(facts.pop("sticker_format")))
    if "emoji" in facts:
        parts.append("emoji " + "".join(facts.pop("emoji")))
    return ", ".join(parts + _rest(facts))


def _generated(facts: dict[str, Any]) -> str:
    parts = []
    if "prompt" in facts:
        parts.append(f"«{_cut(str(facts.pop('prompt')))}»")
    if "seed" in facts:
        image = facts.pop("image_index", None)
        parts.append(f"seed {facts.pop('seed')}" + (f" image {image}" if image is not None else ""))
    facts.pop("rank", None)
    if "top_k" in facts:
        top_k, used = facts.pop("top_k"), facts.pop("top_k_effective", None)
        parts.append(f"top-k {top_k}" + (f" (used {used})" if used not in (None, top_k) else ""))
    for key, name in (("top_p", "top-p"), ("temperature", "temperature")):
        if key in facts:
            parts.append(f"{name} {facts.pop(key)}")
    if facts.get("guidance") in (1, 1.0):
        facts.pop("guidance")  # off, as in the report: not worth a word
    if "score" in facts:
        parts.append(f"score {facts.pop('score'):.4g}")
    if "upscaler" in facts:
        parts.append(f"512 px by {facts.pop('upscaler')}")
    for flag in ("truncated", "latin_only"):
        if facts.pop(flag, False):
            parts.append(flag.replace("_", "-"))
    return ", ".join(parts + _rest(facts))


def _checkpoint(facts: dict[str, Any]) -> str:
    parts = []
    if "model" in facts:
        parts.append(str(facts.pop("model")))
    if "steps" in facts:
        parts.append(f"{facts.pop('steps'):,} steps")
    if "train_pairs" in facts:
        per_caption = facts.pop("images_per_caption", None)
        each = {None: "", 0: ", every image of each caption"}.get(
            per_caption, f", {per_caption} image(s) per caption"
        )
        parts.append(f"trained on {facts.pop('train_pairs'):,} caption-image pairs{each}")
    if "val_loss" in facts:
        parts.append(f"validation loss {facts.pop('val_loss'):.4g}")
    if "weights_origin" in facts:
        parts.append(f"weights {facts.pop('weights_origin')}")
    return ", ".join(parts + _rest(facts))


def _training_data(facts: dict[str, Any]) -> str:
    parts = []
    if "train_images" in facts:
        parts.append(
            f"{facts.pop('train_images'):,} training images of {facts.pop('train_captions', 0):,} captions"
        )
    facts.pop("images_per_caption", None)  # said on the checkpoint's line
    if "trained_pairs" in facts:
        parts.append(f"{facts.pop('trained_pairs'):,} of them trained on")
    if "items_verified" in facts:
        parts.append(f"{facts.pop('items_verified'):,} source images verified")
    if "caption" in facts:
        caption, split = _cut(str(facts.pop("caption"))), facts.pop("caption_split", "")
        sources = facts.pop("caption_sources", [])
        if sources:
            shown = [
                f"{item['source']}{' (trained on)' if item.get('trained_on') else ''}"
                for item in sources[:MAX_ITEMS]
            ]
            more = f" +{len(sources) - MAX_ITEMS} more" if len(sources) > MAX_ITEMS else ""
            parts.append(f"«{caption}», a {split} caption: {', '.join(shown)}{more}")
        else:
            parts.append(f"«{caption}»: not a catalogue caption (zero-shot)")
        facts.pop("example_sources", None)  # the caption's own sources say more
    elif "example_sources" in facts:
        parts.append("e.g. " + _list(facts.pop("example_sources")))
    for key in ("styles", "licences"):
        if key in facts:
            counts = facts.pop(key)
            parts.append(f"{key} " + _list([f"{name} {count:,}" for name, count in counts.items()]))
    return ", ".join(parts + _rest(facts))


def _stage(facts: dict[str, Any]) -> str:
    params = _leaves(facts.pop("params", {}))
    outs = facts.pop("outs", {})
    return ", ".join([f"{len(params)} params", f"{len(outs)} outputs as in dvc.lock", *_rest(facts)])


def _commit(facts: dict[str, Any]) -> str:
    parts = [str(facts.pop("commit", ""))[:12]]
    uncommitted = facts.pop("uncommitted", [])
    parts.append(f"uncommitted: {_list(uncommitted)}" if uncommitted else "pipeline files committed")
    return ", ".join(parts + _rest(facts))


def _generic(facts: dict[str, Any]) -> str:
    return ", ".join(_rest(facts))


def _rest(facts: dict[str, Any]) -> list[str]:
    """Whatever a phrase did not take, as `key value`, each value shortened."""
    return [f"{key.replace('_', ' ')} {_short(value)}" for key, value in facts.items()]


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return f"{len(value)} entries"
    if isinstance(value, list | tuple):
        return _list(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return _cut(str(value))


def _list(items: list[Any] | tuple[Any, ...]) -> str:
    shown = ", ".join(_cut(str(item)) for item in items[:MAX_ITEMS])
    return shown + (f" +{len(items) - MAX_ITEMS} more" if len(items) > MAX_ITEMS else "")


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _leaves(params: Any) -> list[Any]:
    """The scalar values of a nested params mapping (what a stage's line counts)."""
    if isinstance(params, dict):
        return [leaf for value in params.values() for leaf in _leaves(value)]
    return [params]


_PHRASES = {
    "sticker": _sticker,
    "generated-image": _generated,
    "checkpoint": _checkpoint,
    "training-data": _training_data,
    "stage": _stage,
    "commit": _commit,
}
