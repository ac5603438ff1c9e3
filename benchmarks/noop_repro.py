"""How long DVC takes to say "up to date": one file per image against a few tar shards per folder.

Two throw-away DVC projects with the shape of scrape → prepare → upscale hold the same images:

- `per-file`: one PNG-sized file per image in six folders (raw/images, prepared/{rgb,rgba,mask},
  upscaled/{images,masks}), the layout the stages used to write;
- `shards`: the same bytes as `emojich.foundation.shards` tar shards, one folder per stage.

Each is reproduced once, then a no-op `dvc repro` is timed in both, interleaved repeat by repeat
so that machine load affects them alike. The JSON gives the median seconds and the ratio.
`--project PATH` also times a no-op `dvc repro upscale` in a real checkout whose data is built.

CPU, default 11,672 images (the demo catalogue's size): about two minutes, mostly building the
per-file project.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml

# Each stage writes these folders: (per-file layout, shard layout). Bytes per member are small
# and random; their size does not matter to a no-op check, which compares file metadata only.
STAGES = {
    "scrape": ((["raw/images"], ["raw/images"]), None),
    "prepare": ((["prepared/rgb", "prepared/rgba", "prepared/mask"], ["prepared/images"]), "scrape"),
    "upscale": ((["upscaled/images", "upscaled/masks"], ["upscaled/images"]), "prepare"),
}

# The stage command: writes `count` items into the given folders, per file or as shards.
WRITER = textwrap.dedent(
    """
    import random, sys
    from pathlib import Path
    from emojich.foundation.shards import write_shards

    layout, count, stage, folders = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    rng = random.Random(stage)
    keys = [f"item-{i:05d}" for i in range(count)]
    if layout == "per-file":
        for folder in folders:
            Path(folder).mkdir(parents=True, exist_ok=True)
            for key in keys:
                (Path(folder) / f"{key}.png").write_bytes(rng.randbytes(rng.randint(512, 4096)))
    else:
        kinds = {"scrape": ["png"], "prepare": ["rgb.png", "rgba.png", "mask.png"]}.get(stage, ["rgb.png", "mask.png"])
        items = ((key, {kind: rng.randbytes(rng.randint(512, 4096)) for kind in kinds}) for key in keys)
        write_shards(folders[0], Path(folders[0]).parent.name, items)
    """
)


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True, check=True
    )


def build_project(root: Path, layout: str, count: int) -> Path:
    project = root / layout
    project.mkdir()
    (project / "writer.py").write_text(WRITER)
    stages = {}
    for name, ((per_file, sharded), upstream) in STAGES.items():
        folders = per_file if layout == "per-file" else sharded
        outs = [f"data/{folder}" for folder in folders]
        command = f"{sys.executable} writer.py {layout} {count} {name} {' '.join(outs)}"
        stage: dict[str, object] = {"cmd": command, "outs": outs}
        if upstream:
            upstream_folders = STAGES[upstream][0][0 if layout == "per-file" else 1]
            stage["deps"] = [f"data/{folder}" for folder in upstream_folders]
        stages[name] = stage
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc(project, "init", "-q")
    dvc(project, "repro", "-q")
    return project


def count_files(project: Path) -> int:
    return sum(
        1 for path in (project / "data").rglob("*") if path.is_file() and not path.name.startswith(".")
    )


def timed_noop(project: Path, *targets: str) -> float:
    start = time.perf_counter()
    result = dvc(project, "repro", *targets)
    seconds = time.perf_counter() - start
    if "Running stage" in result.stdout:
        raise RuntimeError(f"{project}: the repro was not a no-op:\n{result.stdout}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=11_672)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--project", type=Path, help="also time `dvc repro upscale` in this checkout")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="noop-repro-"))
    try:
        build_started = time.perf_counter()
        projects = {layout: build_project(root, layout, args.images) for layout in ("per-file", "shards")}
        build_seconds = time.perf_counter() - build_started
        files = {name: count_files(project) for name, project in projects.items()}
        times: dict[str, list[float]] = {name: [] for name in projects}
        if args.project:
            times["project"] = []
        for _ in range(args.repeats):
            for name, project in projects.items():
                times[name].append(timed_noop(project))
            if args.project:
                times["project"].append(timed_noop(args.project.resolve(), "upscale"))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
    report = {
        "images": args.images,
        "repeats": args.repeats,
        "files": files,
        "noop_repro_s": medians,
        "noop_repro_s_all": {name: [round(v, 3) for v in values] for name, values in times.items()},
        "per_file_vs_shards": round(medians["per-file"] / medians["shards"], 2),
        "build_s": round(build_seconds, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
