#!/usr/bin/env bash
# The paper profile on stand-in weights, before anyone has the published files.
#
#   benchmarks/paper_dry_run.sh [WORK_DIR] [--size full|tiny]      (default /tmp/emojich-paper-dry-run, full)
#
# Writes WORK_DIR/report.json (rewritten after every stage) and one log per stage under WORK_DIR/logs.
# Full size needs ~12 GB of disk and ~12 GB of RAM; on 2 CPU cores it is limited to LIMIT (default 45m).
# On a GPU machine, drop the overrides' `device: cpu` in tests/paper_profile.py to use the profile's own.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
# timeout signals the whole process group, so a stage DVC started stops with the driver.
exec nice -n "${NICE:-10}" timeout --kill-after=30s "${LIMIT:-45m}" .venv/bin/python benchmarks/paper_dry_run.py "$@"
