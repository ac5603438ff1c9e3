"""Lineage for a person: one block per link of the chain, breaks marked, a verdict at the end."""

from __future__ import annotations

import json

from emojich.lineage.trace import Lineage


def render_text(lineage: Lineage) -> str:
    """A human-readable chain, one block per link, breaks marked."""
    lines = [f"lineage of {lineage.target}", ""]
    for link in lineage.links:
        mark = "ok  " if link.ok else "BREAK"
        head = f"[{mark}] {link.title}"
        if link.path:
            head += f"  {link.path}"
        if link.sha256:
            head += f"  sha256:{link.sha256[:16]}…"
        lines.append(head)
        for key, value in link.facts.items():
            if value in (None, {}, []):
                continue
            text = (
                json.dumps(value, ensure_ascii=False, sort_keys=True)
                if isinstance(value, dict | list)
                else value
            )
            lines.append(f"        {key}: {text}")
        if link.problem:
            lines.append(f"        !! {link.problem}")
    verdict = (
        "verified end to end"
        if not lineage.breaks
        else f"{len(lineage.breaks)} break(s): {', '.join(lineage.break_kinds)}"
    )
    lines += ["", verdict]
    return "\n".join(lines)
