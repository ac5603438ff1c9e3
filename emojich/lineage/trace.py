"""Where an output came from: a sticker traced back to the images and code that made it.

The chain, newest first:

    sticker -> generated image (prompt, seed, sampling) -> checkpoint -> the training pairs
    -> upscaled / prepared images -> each source image (URL or package and code point, licence)
    -> the DVC stages that made each step (checked against dvc.lock) -> git commit and params

Every step is verified, not just reported: file hashes against the sidecars and manifests that
recorded them, and each stage's dependencies and outputs against `dvc.lock` (through DVC's own
status check). A step that does not verify is a *break*, named by kind, so a sticker edited
after it was made, a checkpoint that is not the one in `dvc.lock`, or a missing sidecar is
reported as exactly that. The Telegram bot's stickers (sidecar `made_by: emojich-bot`) follow
the same chain from the candidate they were cut from. Tracing starts from whichever kind of file
it is given; an image inside a stage's shards is named `<shard>:<member>`, e.g.
`data/prepared/images/prepared-00000.tar:twemoji-1f600.rgb.png`, the form this module prints.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from emojich.foundation.layout import IMAGES_DIR, RAW_KIND, RGB_KIND
from emojich.foundation.records import PROVENANCE_FILE
from emojich.foundation.shards import SHARD_SUFFIX, ShardReader, member_ref
from emojich.foundation.storage import file_digest, sha256_bytes, sha256_file
from emojich.models.origin import safetensors_origin

STICKERS = Path("data/stickers/images")
GENERATED = Path("data/generated")
CHECKPOINT = Path("data/finetune/model.safetensors")
TOKENS_INDEX = Path("data/tokens/index.csv")
UPSCALED = Path("data/upscaled")
PREPARED = Path("data/prepared")
RAW = Path("data/raw")

# The `made_by` of the Telegram bot's sticker sidecars (emojich.bot): its stickers live wherever
# its state folder is (data/bot by default), so they are recognised by their sidecar.
BOT_MAKER = "emojich-bot"

# Upstream order of the stages behind a checkpoint.
TRAINING_STAGES = ("finetune", "tokenize", "upscale", "prepare", "scrape")


@dataclasses.dataclass
class Link:
    kind: str  # sticker | generated-image | checkpoint | training-data | item | stage | commit
    title: str
    path: str | None = None
    sha256: str | None = None
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    problem: str | None = None  # None when verified; else "<break kind>: <what is wrong>"

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclasses.dataclass
class Lineage:
    target: str
    links: list[Link] = dataclasses.field(default_factory=list)

    @property
    def breaks(self) -> list[Link]:
        return [link for link in self.links if not link.ok]

    @property
    def break_kinds(self) -> list[str]:
        return [link.problem.split(":", 1)[0] for link in self.breaks if link.problem]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "verified": not self.breaks,
            "breaks": [link.problem for link in self.breaks],
            "links": [dataclasses.asdict(link) | {"ok": link.ok} for link in self.links],
        }


class Tracer:
    """Walks the chain for one target inside a project checkout at `root`."""

    def __init__(self, root: Path, verify_items: bool = True):
        self.root = root
        self.verify_items = verify_items
        self.lock = _read_yaml(root / "dvc.lock").get("stages", {})
        self._shards: dict[Path, ShardReader] = {}
        self._manifests: dict[Path, dict[str, dict[str, str]]] = {}

    def close(self) -> None:
        for shards in self._shards.values():
            shards.close()

    # -- entry point --------------------------------------------------------------------------------
    def trace(self, path: str | Path) -> Lineage:
        shard, member = _split_shard_ref(str(path))
        if member is not None:
            return self._trace_member(Path(shard), member)
        path = Path(path)
        relative = _relative_to(path, self.root)
        lineage = Lineage(target=relative.as_posix())
        if not (self.root / relative).is_file():
            raise FileNotFoundError(f"no such file: {path}")
        if _under(relative, STICKERS):
            self._sticker(relative, lineage)
        elif _made_by_bot(self.root / relative):
            self._sticker(relative, lineage, maker=BOT_MAKER)
        elif _under(relative, GENERATED):
            self._generated(relative, lineage, expected_sha=None)
        elif relative == CHECKPOINT:
            self._checkpoint(relative, lineage, expected_sha=None)
        else:
            raise ValueError(
                f"{relative}: not a file lineage knows (stickers of the pipeline or the bot, generated "
                "images, the checkpoint, or an upscaled or prepared image as <shard>:<member>)"
            )
        self._commit(lineage)
        return lineage

    def _trace_member(self, shard: Path, member: str) -> Lineage:
        """An upscaled or prepared image named `<shard>:<id>.<kind>`."""
        relative = _relative_to(shard, self.root)
        if not (self.root / relative).is_file():
            raise FileNotFoundError(f"no such shard: {shard}")
        item_id, _, kind = member.partition(".")
        shards = self._reader(relative.parent)
        if not shards.has(item_id, kind) or shards.shard_of(item_id, kind) != self.root / relative:
            raise FileNotFoundError(f"{relative} holds no member {member}")
        lineage = Lineage(target=f"{relative.as_posix()}:{member}")
        if relative.parent == UPSCALED / IMAGES_DIR:
            self._item(item_id, lineage, start="upscaled")
            self._stages(("upscale", "prepare", "scrape"), lineage)
        elif relative.parent == PREPARED / IMAGES_DIR:
            self._item(item_id, lineage, start="prepared")
            self._stages(("prepare", "scrape"), lineage)
        else:
            raise ValueError(f"{relative}: lineage traces the shards of data/upscaled and data/prepared")
        self._commit(lineage)
        return lineage

    # -- links ------------------------------------------------------------------------------------
    def _sticker(self, relative: Path, lineage: Lineage, maker: str = "stickers stage") -> None:
        """A sticker of the `stickers` stage, or of the bot (`maker`), and the image it was cut from."""
        actual = sha256_file(self.root / relative)
        sidecar_path = relative.with_suffix(".json")
        link = Link("sticker", "sticker", relative.as_posix(), actual)
        lineage.links.append(link)
        sidecar = _read_json(self.root / sidecar_path)
        if sidecar is None:
            link.problem = (
                f"missing-sidecar: {sidecar_path} is missing, so nothing links this sticker to its origin"
            )
            return
        keys = ("mask_method", "confidence", "sticker_format", "made_by", "emoji")
        link.facts = {k: sidecar.get(k) for k in keys if k in sidecar}
        if sidecar.get("sticker_sha256") != actual:
            link.problem = (
                f"sticker-modified: the file's sha256 {actual[:12]}… differs from the "
                f"{str(sidecar.get('sticker_sha256'))[:12]}… the {maker} recorded: edited after it was made"
            )
        if maker == BOT_MAKER:
            # The bot runs no DVC stage; its U-Net, when it cut the sticker, is the segment stage's.
            self._stages(("segment",) if sidecar.get("mask_method") == "unet" else (), lineage)
        else:
            self._stages(("stickers", "segment"), lineage)
        source = sidecar.get("source_image")
        if not source:
            lineage.links.append(
                Link("generated-image", "generated image", problem="missing-sidecar: no source_image")
            )
            return
        self._generated(Path(source), lineage, expected_sha=sidecar.get("source_sha256"))

    def _generated(self, relative: Path, lineage: Lineage, expected_sha: str | None) -> None:
        full = self.root / relative
        actual = sha256_file(full) if full.is_file() else None
        link = Link("generated-image", "generated image", relative.as_posix(), actual)
        lineage.links.append(link)
        if actual is None:
            link.problem = f"missing-file: {relative} is gone"
            return
        sidecar = _read_json(full.with_suffix(".json"))
        if sidecar is None:
            link.problem = f"missing-sidecar: {relative.with_suffix('.json')} is missing"
            return
        link.facts = {
            k: sidecar.get(k)
            for k in (
                "prompt",
                "seed",
                "index",
                "top_k",
                "top_p",
                "temperature",
                "score",
                "upscaler",
                "truncated",
            )
            if k in sidecar
        }
        if sidecar.get("png_sha256") != actual:
            link.problem = f"image-modified: {relative} differs from the image its sidecar recorded"
        elif expected_sha and expected_sha != actual:
            link.problem = f"image-modified: {relative} differs from the image the sticker was cut from"
        stage = self._stage_owning(relative)
        if stage:
            self._stages((stage,), lineage)
        self._checkpoint(CHECKPOINT, lineage, expected_sha=sidecar.get("checkpoint_sha256"))

    def _checkpoint(self, relative: Path, lineage: Lineage, expected_sha: str | None) -> None:
        full = self.root / relative
        actual = sha256_file(full) if full.is_file() else None
        link = Link("checkpoint", "checkpoint", relative.as_posix(), actual)
        lineage.links.append(link)
        metrics = _read_json(full.parent / PROVENANCE_FILE) or {}
        link.facts = {
            k: metrics.get(k) for k in ("model", "steps", "freeze", "val_loss", "train_pairs") if k in metrics
        }
        if actual is not None:
            # From the checkpoint itself: stand-in weights upstream are never lost on the way.
            with contextlib.suppress(Exception):  # an unreadable file is reported below, by its hash
                link.facts["weights_origin"] = safetensors_origin(full)
        if actual is None:
            link.problem = f"missing-file: {relative} is gone"
        elif expected_sha and actual != expected_sha:
            link.problem = (
                f"checkpoint-mismatch: the image was made by checkpoint {expected_sha[:12]}…, "
                f"the workspace holds {actual[:12]}…"
            )
        elif not self._matches_lock(relative):
            link.problem = f"checkpoint-not-in-lock: {relative} is not the checkpoint dvc.lock records"
        self._training_data(lineage)
        self._stages(TRAINING_STAGES, lineage)

    def _training_data(self, lineage: Lineage) -> None:
        index = _read_csv(self.root / TOKENS_INDEX)
        link = Link("training-data", "training pairs", TOKENS_INDEX.as_posix())
        lineage.links.append(link)
        if index is None:
            link.problem = f"missing-file: {TOKENS_INDEX} is gone"
            return
        link.sha256 = sha256_file(self.root / TOKENS_INDEX)
        train_ids = [row["id"] for row in index if row["split"] == "train"]
        prepared, raw = self._manifest_rows(PREPARED), self.raw_rows
        styles, licences = Counter(), Counter()
        broken: list[str] = []
        for item_id in train_ids:
            row = prepared.get(item_id)
            source = raw.get(item_id)
            if row is None or source is None:
                broken.append(f"{item_id}: no manifest row")
                continue
            styles[row["style"]] += 1
            licences[source["licence"]] += 1
            if self.verify_items:
                _, raw_sha = self._member(RAW / IMAGES_DIR, item_id, RAW_KIND)
                if raw_sha != source["sha256"]:
                    broken.append(f"{item_id}: source image changed or missing")
                elif row["raw_sha256"] != source["sha256"]:
                    broken.append(f"{item_id}: prepared from another source image")
        link.facts = {
            "train_pairs": len(train_ids),
            "styles": dict(sorted(styles.items())),
            "licences": dict(sorted(licences.items())),
            "example_sources": [raw[i]["source"] for i in train_ids[:3] if i in raw],
            "items_verified": len(train_ids) - len(broken) if self.verify_items else None,
        }
        if broken:
            link.problem = f"item-mismatch: {len(broken)} training item(s) do not verify, e.g. {broken[0]}"

    def _item(self, item_id: str, lineage: Lineage, start: str) -> None:
        if start == "upscaled":
            upscaled = self._manifest_image(lineage, UPSCALED, item_id, "sha256", ("method", "split"))
            if upscaled is None:
                return
        row = self._manifest_image(lineage, PREPARED, item_id, "rgb_sha256", ("caption", "split", "style"))
        if row is None:
            return
        raw = self.raw_rows.get(item_id)
        if raw is None:
            source = Link(
                "item", "source image", problem=f"missing-manifest-row: {item_id} is not in the catalogue"
            )
            lineage.links.append(source)
            return
        source = self._image_link("source image", RAW / IMAGES_DIR, item_id, RAW_KIND)
        lineage.links.append(source)
        source.facts = {"source": raw["source"], "licence": raw["licence"], "style": raw["style"]}
        if source.ok and (source.sha256 != raw["sha256"] or row["raw_sha256"] != raw["sha256"]):
            source.problem = "image-modified: the source image differs from the catalogue's record"

    def _manifest_image(
        self, lineage: Lineage, stage_dir: Path, item_id: str, sha_column: str, fact_keys: tuple[str, ...]
    ) -> dict[str, str] | None:
        """Link a stage's RGB image (data/upscaled or data/prepared), checked against its manifest
        row; returns the row, or None when the manifest has none."""
        stage = stage_dir.name
        link = self._image_link(f"{stage} image", stage_dir / IMAGES_DIR, item_id, RGB_KIND)
        lineage.links.append(link)
        row = self._manifest_rows(stage_dir).get(item_id)
        if row is None:
            link.problem = f"missing-manifest-row: {item_id} is not in the {stage} manifest"
            return None
        link.facts = {key: row.get(key) for key in fact_keys}
        if link.ok and row[sha_column] != link.sha256:
            link.problem = f"image-modified: the {stage} image differs from its manifest"
        return row

    def _image_link(self, title: str, folder: Path, item_id: str, kind: str) -> Link:
        path, sha = self._member(folder, item_id, kind)
        link = Link("item", title, path, sha)
        if sha is None:
            link.problem = f"missing-file: the shards in {folder.as_posix()} hold no {item_id}.{kind}"
        return link

    def _stages(self, names: tuple[str, ...], lineage: Lineage) -> None:
        seen = {link.title for link in lineage.links if link.kind == "stage"}
        for name in names:
            title = f"stage {name}"
            if title in seen:
                continue
            entry = self.lock.get(name)
            link = Link("stage", title)
            lineage.links.append(link)
            if entry is None:
                link.problem = f"stage-not-in-lock: dvc.lock has no entry for {name}"
                continue
            link.facts = {
                "params": (entry.get("params") or {}).get("params.yaml", {}),
                "outs": {out["path"]: out.get("md5") for out in entry.get("outs", [])},
            }
            changed = self.changes.get(name)
            if changed:
                link.problem = f"stage-changed: {name} no longer matches dvc.lock ({changed})"

    def _commit(self, lineage: Lineage) -> None:
        link = Link("commit", "git commit")
        lineage.links.append(link)
        head = _git(self.root, "rev-parse", "HEAD")
        if head is None:
            link.problem = "no-commit: the project is not a git repository with commits"
            return
        dirty = _git(self.root, "status", "--porcelain", "--", "dvc.yaml", "dvc.lock", "params.yaml") or ""
        link.facts = {"commit": head.strip(), "uncommitted": [line[3:] for line in dirty.splitlines()]}
        if dirty.strip():
            link.problem = "uncommitted-pipeline: dvc.yaml, dvc.lock or params.yaml differ from the commit"

    # -- helpers ----------------------------------------------------------------------------------
    @functools.cached_property
    def changes(self) -> dict[str, str]:
        return dvc_changes(self.root)

    @functools.cached_property
    def raw_rows(self) -> dict[str, dict[str, str]]:
        return _rows_by_id(self.root / RAW / "captions.csv")

    def _manifest_rows(self, stage_dir: Path) -> dict[str, dict[str, str]]:
        """A stage's manifest.csv by id, read once per trace."""
        if stage_dir not in self._manifests:
            self._manifests[stage_dir] = _rows_by_id(self.root / stage_dir / "manifest.csv")
        return self._manifests[stage_dir]

    def _reader(self, folder: Path) -> ShardReader:
        if folder not in self._shards:
            self._shards[folder] = ShardReader(self.root / folder)
        return self._shards[folder]

    def _member(self, folder: Path, item_id: str, kind: str) -> tuple[str | None, str | None]:
        """(`<shard>:<member>`, sha256) of one image in a stage's shards; (None, None) if absent."""
        shards = self._reader(folder)
        if not shards.has(item_id, kind):
            return None, None
        ref = member_ref(shards.shard_of(item_id, kind).relative_to(self.root), item_id, kind)
        return ref, sha256_bytes(shards.read(item_id, kind))

    def _matches_lock(self, relative: Path) -> bool:
        for entry in self.lock.values():
            for out in entry.get("outs", []):
                if out["path"] == relative.as_posix():
                    full = self.root / relative
                    return full.is_file() and out.get("md5") == file_digest(full, "md5")
        return False

    def _stage_owning(self, relative: Path) -> str | None:
        for name, entry in self.lock.items():
            for out in entry.get("outs", []):
                if _under(relative, Path(out["path"])):
                    return name
        return None


def dvc_changes(root: Path) -> dict[str, str]:
    """DVC's own verdict per stage: what no longer matches dvc.lock (stages that match are absent)."""
    from dvc.repo import Repo

    # DVC resolves output paths against the working directory, so it must be the project's.
    with contextlib.chdir(root), Repo(str(root)) as repo:
        status = repo.status()
    return {
        name: "; ".join(json.dumps(change, sort_keys=True, ensure_ascii=False) for change in changes)
        for name, changes in status.items()
    }


def trace(path: str | Path, root: str | Path = ".", verify_items: bool = True) -> Lineage:
    """The lineage of a file, or of an image in a stage's shards given as `<shard>:<member>`."""
    tracer = Tracer(Path(root).resolve(), verify_items)
    try:
        return tracer.trace(path)  # relative paths are resolved against the working directory
    finally:
        tracer.close()


# -- small I/O helpers ------------------------------------------------------------------------------


def _relative_to(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root)
    except ValueError:
        raise ValueError(f"{path} is not inside the project at {root}") from None


def _split_shard_ref(text: str) -> tuple[str, str | None]:
    """`a/b.tar:id.rgb.png` -> ("a/b.tar", "id.rgb.png"); anything else -> (text, None)."""
    shard, colon, member = text.rpartition(":")
    if colon and shard.endswith(SHARD_SUFFIX) and member:
        return shard, member
    return text, None


def _made_by_bot(path: Path) -> bool:
    sidecar = _read_json(path.with_suffix(".json")) if path.suffix != ".json" else None
    return bool(sidecar) and sidecar.get("made_by") == BOT_MAKER


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _rows_by_id(path: Path) -> dict[str, dict[str, str]]:
    return {row["id"]: row for row in _read_csv(path) or []}


def _read_csv(path: Path) -> list[dict[str, str]] | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _git(root: Path, *args: str) -> str | None:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None
