"""The committed dvc.lock is what a fresh machine computes for the data stages.

The default catalogue is built only from what `make setup` installs (pinned packages, pinned CLDR
from the npm registry), so `scrape` and `prepare` run from scratch here must give byte for byte the
outputs, and read exactly the code and params, that the committed lock records. A source that
depends on the machine (a system font, a system CLDR) would show up here as a changed hash.
"""

from __future__ import annotations

import pytest
import yaml

from tests.pipeline import ROOT, dvc, make_pipeline_repo

pytestmark = pytest.mark.slow

DATA_STAGES = ("scrape", "prepare")


def test_default_data_stages_reproduce_the_committed_lock(tmp_path):
    committed = yaml.safe_load((ROOT / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    repo = make_pipeline_repo(tmp_path / "repo", {})
    dvc("repro", "prepare", cwd=repo)
    fresh = yaml.safe_load((repo / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    for stage in DATA_STAGES:
        assert fresh[stage] == committed[stage], f"{stage}: this machine's entry differs from dvc.lock"
