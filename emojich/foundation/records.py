"""The two records every stage writes: a small metrics file and the full provenance.

DVC compares metrics across commits and experiments only when it can read them at each revision,
so, as in iterative/example-get-started, the metrics are small JSON files committed to git
(`metrics/<stage>.json`, `cache: false`): a handful of rounded numbers a person compares. Everything
else a stage knows about its run (variant names, sha256s, package versions, per-reason counts,
the parameters in force) goes to a provenance JSON beside its outputs, cached by DVC like any
output and read by `emojich lineage`, never shown as a metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from emojich.foundation.storage import write_json_atomic

METRICS_DIR = Path("metrics")
PROVENANCE_FILE = "provenance.json"


def rounded(value: Any, digits: int = 4) -> Any:
    """A number as a person compares it; NaN (no data) becomes null, which JSON can hold."""
    if isinstance(value, bool) or not isinstance(value, float):
        return value
    return None if math.isnan(value) else round(value, digits)


def pick(
    record: Mapping[str, Any], keys: Iterable[str] | Mapping[str, str], digits: int = 4
) -> dict[str, Any]:
    """The keys of `record` that are present, rounded, in the given order; a mapping of keys
    renames them (record key -> metric name): metric names are table headers in `dvc metrics show`
    and `dvc exp show`, and short ones keep those tables within a terminal's width."""
    names = keys if isinstance(keys, Mapping) else {key: key for key in keys}
    return {name: rounded(record[key], digits) for key, name in names.items() if key in record}


def write_records(
    metrics_path: Path, metrics: Mapping[str, Any], provenance_path: Path, provenance: Mapping[str, Any]
) -> None:
    write_json_atomic(provenance_path, dict(provenance))
    write_json_atomic(metrics_path, dict(metrics))
