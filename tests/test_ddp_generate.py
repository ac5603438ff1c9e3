"""`emojich generate` under torchrun (2 gloo processes) writes the same bytes as one process."""

from __future__ import annotations

import json
from pathlib import Path

from emojich import cli
from emojich.generate.cell import work_units
from tests.test_generate import make_tiny_assets


def _generate(assets: dict[str, Path], out: Path, *extra: str) -> int:
    return cli.main(
        [
            "generate",
            *("зима в горах", "кролик синего цвета", "-n", "5", "--keep-best", "3", "--batch-size", "2"),
            *("--out", str(out), "--checkpoint", str(assets["checkpoint"])),
            *("--tokens", str(assets["tokens"]), "--upscaler", str(assets["upscaler"])),
            *("--device", "cpu", *extra),
        ]
    )


def _files(folder: Path) -> dict[str, bytes]:
    # timing.json holds images/s, which differs run to run by design.
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "timing.json"
    }


def test_two_processes_write_byte_identical_images_sidecars_and_attempts(tmp_path):
    assets = make_tiny_assets(tmp_path / "assets")
    assert _generate(assets, tmp_path / "one") == 0
    assert _generate(assets, tmp_path / "two", "--nproc-per-node", "2") == 0  # relaunches under torchrun

    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len([name for name in one if name.startswith("kept/")]) == 2 * 3 * 2  # PNG + sidecar
    assert {"all/attempts.jsonl", "all/codes.safetensors", "sheet.png", "metrics.json"} <= set(one)
    assert sorted(two) == sorted(one)
    for name, data in one.items():
        assert two[name] == data, name
    timings = [json.loads((tmp_path / run / "timing.json").read_text()) for run in ("one", "two")]
    assert [timing["processes"] for timing in timings] == [1, 2]


def test_work_is_shared_by_whole_batches_in_one_process_order():
    units = work_units(prompts=2, attempts=5, batch_size=2)
    assert units == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (1, 0, 2), (1, 2, 4), (1, 4, 5)]
    # Rank r takes units r, r + world, ...: every attempt of every prompt exactly once.
    shared = sorted(unit for rank in range(2) for unit in units[rank::2])
    assert shared == units
