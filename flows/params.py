"""Setting one value of params.yaml in place, comments and key order kept.

The sweep writes the night's seeds into a clone's params.yaml so that DVC expands the same grid cells
(stage names such as `generate@8-0.995-1.0-42`) in every clone that takes part.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq
from ruamel.yaml.representer import RoundTripRepresenter


def _represent_null(representer: RoundTripRepresenter, _: None) -> Any:
    # params.yaml spells null out (`weights: null`); ruamel's default would leave the value blank.
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def set_param(root: Path, dotted: str, value: Any) -> bool:
    """Set `dotted` (`generate.grid.seed`) in `root`/params.yaml; returns whether the file changed.

    ruamel's round-trip mode keeps the file's comments, which are the parameters' documentation; a plain
    `yaml.safe_dump` would drop them. The file is replaced atomically, so a reader never sees half of it.
    """
    path = root / "params.yaml"
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # no re-wrapping of long lines
    yaml.indent(mapping=2, sequence=4, offset=2)  # the file's own layout
    yaml.representer.add_representer(type(None), _represent_null)
    text = path.read_text(encoding="utf-8")
    data = yaml.load(text)
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        if not isinstance(node, dict) or key not in node:
            raise KeyError(f"params.yaml has no `{dotted}`")
        node = node[key]
    if not isinstance(node, dict) or leaf not in node:
        raise KeyError(f"params.yaml has no `{dotted}`")
    if node[leaf] == value:
        return False
    if isinstance(value, list) and isinstance(node[leaf], CommentedSeq) and node[leaf].fa.flow_style():
        # Keep `seed: [5, 17]` on one line, as the grid is written.
        flow = CommentedSeq(value)
        flow.fa.set_flow_style()
        value = flow
    node[leaf] = value
    handle, temp = tempfile.mkstemp(dir=root, prefix=".params.", suffix=".yaml.tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            yaml.dump(data, stream)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return True
