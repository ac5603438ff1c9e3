"""Where an output came from: a sticker traced back to the images and code that made it.

The chain, newest first:

    sticker -> generated image (prompt, seed, sampling) -> checkpoint -> the training pairs
    -> upscaled / prepared images -> each source image (URL or package and code point, licence)
    -> the DVC stages that made each step (checked against dvc.lock) -> git commit and params

Every step is verified, not just reported: file hashes against the sidecars and manifests that
recorded them, and each stage's dependencies and outputs against `dvc.lock` (through DVC's own
status check). A step that does not verify is a *break*, named by kind, so a sticker edited
after it was made, a checkpoint that is not the one in `dvc.lock`, or a missing sidecar is
reported as exactly that. Stickers and images made outside the pipeline, by `emojich sticker`,
`emojich generate` or the Telegram bot, are known by their JSON sidecars wherever they lie, and
follow the same chain: their sidecar names the image they were cut from and the checkpoint (by
sha256) that drew it; when that is the pipeline's checkpoint, the chain goes on through the
pipeline, and when it is not, the break says so. Tracing starts from whichever kind of file it is
given; an image inside a stage's shards is named `<shard>:<member>`, e.g.
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
UNET = Path("data/segment/unet.safetensors")
TOKENS_INDEX = Path("data/tokens/index.csv")
UPSCALED = Path("data/upscaled")
PREPARED = Path("data/prepared")
RAW = Path("data/raw")

# The `made_by` of the Telegram bot's sticker sidecars (emojich.bot): its stickers live wherever
# its state folder is (data/bot by default), so they are recognised by their sidecar, as are those
# of `emojich sticker` (`made_by: emojich sticker`).
BOT_MAKER = "emojich-bot"
PIPELINE_MAKER = "stickers stage"

# Sidecar keys that tell what a file is: a sticker's sidecar records the sticker's own hash, a
# generated image's the PNG's (a sticker's sidecar holds its image's generation record too).
STICKER_KEY = "sticker_sha256"
GENERATED_KEY = "png_sha256"
# What a generated image's sidecar says about how it was drawn (shown on its link).
GENERATION_FACTS = (
    "prompt",
    "seed",
    "image_index",
    "rank",
    "top_k",
    "top_k_effective",
    "top_p",
    "temperature",
    "guidance",
    "score",
    "upscaler",
    "truncated",
    "latin_only",
    "weights_origin",
)

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
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        # Inside the project a file is named relative to it (as dvc.lock and sidecars name files);
        # a sticker or image made elsewhere (`emojich sticker ... /tmp/x.webp`) keeps its full path.
        relative = self._local(path)
        lineage = Lineage(target=relative.as_posix())
        sidecar = _sidecar(self.root / relative)
        if _under(relative, STICKERS):
            self._sticker(relative, lineage)
        elif sidecar is not None and STICKER_KEY in sidecar:
            self._sticker(relative, lineage, maker=str(sidecar.get("made_by") or "an unnamed maker"))
        elif _under(relative, GENERATED) or (sidecar is not None and GENERATED_KEY in sidecar):
            self._generated(relative, lineage, expected_sha=None)
        elif relative == CHECKPOINT:
            self._checkpoint(lineage, expected_sha=None)
        elif sidecar is not None:
            raise ValueError(
                f"{relative}: its sidecar {relative.with_suffix('.json')} records neither a sticker "
                f"({STICKER_KEY}) nor a generated image ({GENERATED_KEY})"
            )
        else:
            raise ValueError(
                f"{relative}: no sidecar {relative.with_suffix('.json')} beside it, and not a pipeline "
                "file lineage knows (stickers and images from emojich sticker, emojich generate or the bot "
                "are traced through their sidecar; also the checkpoint, or an upscaled or prepared image "
                "as <shard>:<member>)"
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
    def _sticker(self, relative: Path, lineage: Lineage, maker: str = PIPELINE_MAKER) -> None:
        """A sticker of the `stickers` stage, the bot or `emojich sticker` (`maker`), and the image
        it was cut from."""
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
        keys = ("mask_method", "confidence", "sticker_format", "emoji")
        link.facts = {"made_by": maker} | {k: sidecar.get(k) for k in keys if k in sidecar}
        if sidecar.get(STICKER_KEY) != actual:
            link.problem = (
                f"sticker-modified: the file's sha256 {actual[:12]}… differs from the "
                f"{str(sidecar.get(STICKER_KEY))[:12]}… the {maker} recorded: edited after it was made"
            )
        if maker == PIPELINE_MAKER:
            self._stages(("stickers", "segment"), lineage)
        elif sidecar.get("mask_method") == "unet":
            self._sticker_unet(sidecar, link, lineage)
        # The sticker's sidecar carries its image's generation record: when the image itself is gone
        # or was never named, the chain still reaches the checkpoint through that copy.
        record = sidecar if GENERATED_KEY in sidecar else None
        source = sidecar.get("source_image")
        if not source:
            missing = Link(
                "generated-image",
                "generated image",
                problem=f"missing-source: {sidecar_path} names no source_image, so the image it was cut "
                "from cannot be checked",
            )
            lineage.links.append(missing)
            if record is not None:
                missing.facts = {k: record[k] for k in GENERATION_FACTS if k in record}
                self._checkpoint(lineage, record.get("checkpoint_sha256"), record.get("prompt"))
            return
        # Sidecars name a source inside the project relative to it, one outside by its full path.
        image = Path(source) if Path(source).is_absolute() else self.root / source
        self._generated(self._local(image), lineage, expected_sha=sidecar.get("source_sha256"), record=record)

    def _sticker_unet(self, sidecar: dict[str, Any], link: Link, lineage: Lineage) -> None:
        """Outside the pipeline a U-Net cut is the segment stage's when its weights are that stage's
        output (the bot's sidecars name no weights: the bot always loads the pipeline's)."""
        recorded = sidecar.get("unet_sha256")
        unet = self.root / UNET
        if recorded is None or (unet.is_file() and sha256_file(unet) == recorded):
            self._stages(("segment",), lineage)
        else:
            link.facts["unet"] = f"not the pipeline's {UNET} (sha256 {str(recorded)[:12]}…)"

    def _generated(
        self,
        relative: Path,
        lineage: Lineage,
        expected_sha: str | None,
        record: dict[str, Any] | None = None,
    ) -> None:
        """A generated image and its sidecar, then the checkpoint that drew it. `record`: the
        generation record a sticker's sidecar copied, used when the image's own is gone."""
        full = self.root / relative
        actual = sha256_file(full) if full.is_file() else None
        link = Link("generated-image", "generated image", relative.as_posix(), actual)
        lineage.links.append(link)
        sidecar = _read_json(full.with_suffix(".json")) if actual is not None else None
        if actual is None:
            link.problem = f"missing-file: {relative} is gone"
        elif sidecar is None:
            link.problem = f"missing-sidecar: {relative.with_suffix('.json')} is missing"
        elif sidecar.get(GENERATED_KEY) != actual:
            link.problem = f"image-modified: {relative} differs from the image its sidecar recorded"
        elif expected_sha and expected_sha != actual:
            link.problem = f"image-modified: {relative} differs from the image the sticker was cut from"
        record = sidecar or record
        if record is None:
            return  # nothing names the checkpoint: the break above says why
        link.facts = {k: record[k] for k in GENERATION_FACTS if k in record}
        stage = self._stage_owning(relative)
        if stage:
            self._stages((stage,), lineage)
        self._checkpoint(lineage, record.get("checkpoint_sha256"), record.get("prompt"))

    def _checkpoint(self, lineage: Lineage, expected_sha: str | None, prompt: str | None = None) -> None:
        """The checkpoint that drew an image (`expected_sha`, from its sidecar) or the pipeline's
        own; when it is the pipeline's, on through its training data and stages."""
        full = self.root / CHECKPOINT
        actual = sha256_file(full) if full.is_file() else None
        if expected_sha and actual != expected_sha:
            # Another checkpoint (`emojich generate --checkpoint`, or the pipeline's before a
            # re-run): known only by its hash, so its training data cannot be followed from here.
            link = Link("checkpoint", "checkpoint", sha256=expected_sha)
            lineage.links.append(link)
            now = f"{actual[:12]}…" if actual else "not in the workspace (dvc pull or dvc repro makes it)"
            link.problem = (
                f"checkpoint-mismatch: the image was drawn by checkpoint {expected_sha[:12]}…, not by the "
                f"pipeline's {CHECKPOINT} ({now}), so its training data cannot be traced from here"
            )
            return
        link = Link("checkpoint", "checkpoint", CHECKPOINT.as_posix(), actual)
        lineage.links.append(link)
        metrics = _read_json(full.parent / PROVENANCE_FILE) or {}
        keys = ("model", "steps", "freeze", "val_loss", "train_pairs", "images_per_caption")
        link.facts = {k: metrics.get(k) for k in keys if k in metrics}
        if actual is not None:
            # From the checkpoint itself: stand-in weights upstream are never lost on the way.
            with contextlib.suppress(Exception):  # an unreadable file is reported below, by its hash
                link.facts["weights_origin"] = safetensors_origin(full)
        if actual is None:
            link.problem = f"missing-file: {CHECKPOINT} is gone"
        elif not self._matches_lock(CHECKPOINT):
            link.problem = f"checkpoint-not-in-lock: {CHECKPOINT} is not the checkpoint dvc.lock records"
        self._training_data(lineage, metrics.get("images_per_caption"), prompt)
        self._stages(TRAINING_STAGES, lineage)

    def _training_data(self, lineage: Lineage, per_caption: int | None, prompt: str | None) -> None:
        """The training split behind the checkpoint, each image followed to its source; the
        images of the traced prompt's own caption first."""
        index = _read_csv(self.root / TOKENS_INDEX)
        link = Link("training-data", "training data", TOKENS_INDEX.as_posix())
        lineage.links.append(link)
        if index is None:
            link.problem = f"missing-file: {TOKENS_INDEX} is gone"
            return
        link.sha256 = sha256_file(self.root / TOKENS_INDEX)
        train = [row for row in index if row["split"] == "train"]
        train_ids = [row["id"] for row in train]
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
        trained = _trained_ids(train, per_caption)
        # Counts named for what they count: the split has images, several per caption (skin tones,
        # styles); the checkpoint trained on caption-image pairs, `images_per_caption` of each.
        link.facts = {
            "train_images": len(train_ids),
            "train_captions": len({row["caption"] for row in train}),
            "trained_pairs": None if trained is None else len(trained),
            "images_per_caption": per_caption,
            "styles": dict(sorted(styles.items())),
            "licences": dict(sorted(licences.items())),
            "items_verified": len(train_ids) - len(broken) if self.verify_items else None,
        }
        own = [row for row in index if prompt is not None and row["caption"] == prompt]
        if prompt is not None:
            link.facts["caption"] = prompt
            link.facts["caption_split"] = _caption_split(own)
            link.facts["caption_sources"] = [
                {
                    "id": row["id"],
                    "split": row["split"],
                    "trained_on": trained is not None and row["id"] in trained,
                    "source": raw.get(row["id"], {}).get("source"),
                    "licence": raw.get(row["id"], {}).get("licence"),
                }
                for row in own
            ]
        others = [i for i in train_ids if i not in {row["id"] for row in own}]
        link.facts["example_sources"] = [
            raw[i]["source"] for i in [r["id"] for r in own] + others if i in raw
        ][:3]
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

    def _local(self, path: Path) -> Path:
        """`path` relative to the project root when inside it, else absolute."""
        full = path.resolve()
        return full.relative_to(self.root) if full.is_relative_to(self.root) else full

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
        if relative.is_absolute():  # outside the project: no stage made it
            return None
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


def _sidecar(path: Path) -> dict | None:
    """The JSON sidecar beside a file (`x.webp` -> `x.json`), if there is one."""
    if path.suffix == ".json":
        return None
    try:
        sidecar = _read_json(path.with_suffix(".json"))
    except ValueError:  # not JSON: not a sidecar this project wrote
        return None
    return sidecar if isinstance(sidecar, dict) else None


def _trained_ids(train: list[dict[str, str]], per_caption: int | None) -> set[str] | None:
    """Ids of the training images the checkpoint learnt from, chosen as the finetune stage chose
    them (`images_per_caption` of each caption); None when the stage did not record the setting."""
    if per_caption is None:
        return None
    from emojich.train.pairs import limit_per_caption  # torch: imported only when needed

    ids = [row["id"] for row in train]
    return {ids[i] for i in limit_per_caption(ids, [row["caption"] for row in train], int(per_caption))}


def _caption_split(rows: list[dict[str, str]]) -> str:
    """Where a prompt stands in the catalogue: a training caption, a validation one, or neither."""
    splits = {row["split"] for row in rows}
    if "train" in splits:
        return "train"
    return "validation" if splits else "not in the catalogue"


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
