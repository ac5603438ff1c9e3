"""Stage `finetune`: train the transformer on the tokenized set with the report's recipe.

Demo profile: the `demo` preset from scratch, every parameter trainable, reading captions through
a frozen pretrained text encoder: it trains on the tokenize stage's caption pairs (names, keywords,
inflections and colour phrases with their caption vectors, `pairs.*`). Paper profile: a published
checkpoint (Malevich) with attention and feed-forward frozen, image-loss weight 1000, BPE captions
from `index.csv`. Same optimizer, schedule and loss code either way.

Outputs: the checkpoint, per-step CSV plots (`plots/`), an evaluation sample sheet per evaluation
step (`samples/`, the report's human-evaluation grid), `provenance.json` (variant, sizes, the
checkpoint's sha256) and `metrics/finetune.json` (the losses a person compares).

Resume state lives in `data/cache/finetune/` (the last checkpoint, the CSV rows and sheets so far,
and `run.key`), outside every output: a `persist` output would keep the stage out of DVC's
run-cache. A killed run started again resumes from there when the data, parameters and training
code are unchanged (the key); the finished plots and sheets are then copied into the outputs, so
they are the same bytes whether or not the run was interrupted.

With `nproc_per_node` > 1 the stage starts itself again under `torchrun` and trains with DDP
(`emojich.train.loop.Trainer`): the same global batch, schedule and freezing as one process, and
only rank 0 evaluates and writes. The process count is not part of the resume key, so a run
killed on 4 processes may resume on 1.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import emojich.models.dalle
import emojich.train.finetune
import emojich.train.loop
from emojich.fidelity.retrieval import load_reference
from emojich.fidelity.sets import set_metrics
from emojich.foundation import distributed
from emojich.foundation.device import resolve_device
from emojich.foundation.imageset import image_grid, save_png, to_uint8
from emojich.foundation.layout import sequence_of
from emojich.foundation.logs import setup_logging
from emojich.foundation.params import from_dict, load_section
from emojich.foundation.progress import progress_bar
from emojich.foundation.records import METRICS_DIR, PROVENANCE_FILE, pick, write_records
from emojich.foundation.storage import sha256_file, write_bytes_atomic, write_csv_atomic, write_text_atomic
from emojich.generate.sampling import generate
from emojich.models.dalle import Dalle, DalleConfig
from emojich.models.origin import ORIGIN_KEY, combine, file_origin, safetensors_origin
from emojich.models.vqgan import VQGan
from emojich.text.bpe import TextTokenizer
from emojich.text.encoder import load_encoder
from emojich.text.prompt_sets import VARIATION_SELECTOR, PromptSet, SetPrompt, read_prompt_set
from emojich.train.finetune import (
    PairSet,
    build_pairs,
    caption_loss,
    chance_caption_loss,
    freeze_for_finetune,
    pair_loss,
    validation_loss,
)
from emojich.train.loop import StepLog, TrainConfig, Trainer
from emojich.train.pairs import (
    PAIRS_CSV,
    PAIRS_TENSORS,
    MemoryTable,
    limit_per_caption,
    memory_table,
    read_pairs,
)

TOKENS = Path("data/tokens")
OUT = Path("data/finetune")
# Folders of `out` that are built up during training and copied into `out` at the end.
LOGGED = ("samples", "plots")

log = logging.getLogger("stages.finetune")


@dataclasses.dataclass
class ModelParams:
    preset: str = "demo"
    weights: str | None = None  # a published .bin (format of the preset) or our own .safetensors
    loss_img_weight: float = 7.0


@dataclasses.dataclass
class EvalParams:
    every: int = 50  # steps; 0 = only at the end
    prompts: list[str] = dataclasses.field(default_factory=lambda: ["Эйнштейн улыбается"])
    images_per_prompt: int = 4
    top_k: int = 64
    top_p: float = 0.99
    temperature: float = 1.0
    guidance: float = 1.0  # classifier-free guidance scale for the sample sheets; 1 = off
    seed: int = 42
    max_val_pairs: int = 256
    caption_pairs: int = 32  # validation pairs scored for the caption loss (one forward per candidate)
    caption_candidates: int = 8
    # An encoder-conditioned model's headline, at the end: top-10 retrieval of the intended emoji
    # for `learnt_names` training names spread over the catalogue and for each evaluation set,
    # `set_attempts` images per prompt (`emojich.fidelity.sets`).
    sets: list[str] = dataclasses.field(default_factory=list)
    set_attempts: int = 1
    learnt_names: int = 48


@dataclasses.dataclass
class FinetuneParams:
    model: ModelParams = dataclasses.field(default_factory=ModelParams)
    freeze: str = "none"  # none | attention-and-mlp (the report)
    # Share of captions replaced by an empty one, for classifier-free guidance; 0 in the report.
    caption_dropout: float = 0.0
    # Training images kept per caption, default renderings first (`limit_per_caption`); 0 = all.
    images_per_caption: int = 0
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalParams = dataclasses.field(default_factory=EvalParams)
    device: str = "auto"
    # Processes (one per GPU, or CPU processes with gloo); > 1 relaunches the stage under torchrun.
    nproc_per_node: int = 1

    def __post_init__(self) -> None:
        distributed.check_nproc(self.nproc_per_node, "finetune.nproc_per_node")


def build_model(
    params: ModelParams, tokenizer: TextTokenizer, vqgan: VQGan, memory: MemoryTable | None = None
) -> tuple[Dalle, str]:
    """The transformer sized to the tokenizers (and, for an encoder-conditioned one, to its caption
    memory's keys and slots), and a label for the metrics."""
    cfg = DalleConfig.preset(params.preset)
    grid, codebook = vqgan.config.grid_size, vqgan.config.codebook_size
    if params.weights:
        if cfg.image_tokens_per_dim != grid or cfg.image_vocab_size != codebook:
            raise ValueError(
                f"preset {params.preset} expects a {cfg.image_tokens_per_dim}² grid of {cfg.image_vocab_size} codes, "
                f"the image tokenizer gives {grid}² of {codebook}"
            )
        if tokenizer.vocab_size > cfg.vocab_size - cfg.text_seq_length:
            raise ValueError(
                f"the text tokenizer has {tokenizer.vocab_size} tokens, the {params.preset} model fewer"
            )
        cfg.loss_img_weight = params.loss_img_weight
        model = Dalle(cfg)
        path = Path(params.weights)
        if path.suffix == ".safetensors":
            own = Dalle.load(path, expected=cfg)
            model.load_state_dict(own.state_dict())
        else:
            model.load_published(path)
        return model, f"dalle-{params.preset}-finetuned-from:{path.name}"
    # From scratch: the text vocabulary and image grid follow the tokenizers trained upstream.
    cfg = dataclasses.replace(
        cfg,
        vocab_size=tokenizer.vocab_size + cfg.text_seq_length,
        image_vocab_size=codebook,
        image_tokens_per_dim=grid,
        loss_img_weight=params.loss_img_weight,
        layer_masks=None,
        conv_kernel=None,  # re-derived for the tokenizer's grid
        memory_keys=len(memory.keys) if memory and cfg.conditioned else 0,
        memory_slots=memory.slots if memory and cfg.conditioned else 0,
        reference_codes=bool(memory and cfg.reference_codes),
    )
    return Dalle(cfg), f"dalle-{params.preset}-from-scratch"


def read_split(tokens: Path) -> tuple[list[dict[str, str]], torch.Tensor]:
    """index.csv's rows (id, split, caption) and the codes, row-aligned."""
    with open(tokens / "index.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    codes = load_file(str(tokens / "codes.safetensors"))["codes"]
    if len(rows) != len(codes):
        raise ValueError(f"index.csv has {len(rows)} rows but codes.safetensors {len(codes)}")
    return rows, codes


# The code that decides what a training step computes: a checkpoint made by other code is not resumed.
TRAINING_CODE = (emojich.train.finetune, emojich.train.loop, emojich.models.dalle)


def run_key(params: FinetuneParams, tokens: Path) -> str:
    """What a resumable checkpoint must agree with: every parameter, the input data and the training code."""
    # The process count changes where a step is computed, not what it computes.
    settings = {k: v for k, v in dataclasses.asdict(params).items() if k != "nproc_per_node"}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in ("codes.safetensors", "index.csv", "bpe.json", "vqgan.safetensors", PAIRS_CSV, PAIRS_TENSORS):
        if (tokens / name).is_file():
            digest.update(sha256_file(tokens / name).encode())
    for module in TRAINING_CODE:
        digest.update(sha256_file(module.__file__).encode())
    return digest.hexdigest()


class CsvLog:
    """Rows accumulated in memory and rewritten atomically, so a kill never leaves half a line."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns, self.rows = path, columns, []

    def add(self, **values: float) -> None:
        row = [_fmt(values[c]) for c in self.columns]
        # A step logged again (the final evaluation of a run resumed at its end) replaces its row,
        # so an interrupted run's tables are the same bytes as an uninterrupted one's.
        self.rows = [old for old in self.rows if old[0] != row[0]] + [row]
        write_csv_atomic(self.path, self.columns, self.rows)


def _fmt(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def _sample(
    model: Dalle,
    text: torch.Tensor,
    conditions: torch.Tensor | None,
    images_num: int,
    params: EvalParams,
    guidance: float = 1.0,
):
    """`images_num` images per caption with the evaluation's sampler settings."""
    return generate(
        model,
        text,
        conditions=conditions,
        images_num=images_num,
        top_k=min(params.top_k, model.config.image_vocab_size),
        top_p=params.top_p,
        temperature=params.temperature,
        seed=params.seed,
        progress=False,
        guidance=guidance,
    )


def sample_sheet(
    model: Dalle, vqgan: VQGan, tokenizer: TextTokenizer, params: EvalParams, device: torch.device
):
    conditions = None
    if model.config.conditioned:
        text = model.blank_text(len(params.prompts))
        conditions = load_encoder(model.config.text_encoder).condition(params.prompts)
    else:
        text = tokenizer.encode_batch(params.prompts, model.config.text_seq_length)
    result = _sample(model, text, conditions, params.images_per_prompt, params, params.guidance)
    images = to_uint8(vqgan.decode(result.codes))
    return image_grid(images, columns=params.images_per_prompt)


def learnt_name_set(rows: list[dict[str, str]], count: int) -> PromptSet:
    """`count` training emoji names, spread evenly over the pairs, each asking for its own emoji."""
    names = {row["caption"]: row["id"] for row in rows if row["split"] == "train" and row["kind"] == "name"}
    chosen = sorted(names)[:: max(len(names) // max(count, 1), 1)][:count]
    return PromptSet(
        "learnt",
        [
            SetPrompt(name, ((sequence_of(names[name]) or "").replace(VARIATION_SELECTOR, ""),))
            for name in chosen
        ],
    )


@torch.no_grad()
def generalisation(model: Dalle, vqgan: VQGan, tokens: Path, params: EvalParams) -> dict[str, float]:
    """What the checkpoint draws for learnt names and the evaluation sets, one plain sample run per
    set (not the generate stage's cells, which also keep the best of more attempts)."""
    reference = load_reference(tokens)
    if reference is None or not model.config.conditioned:
        return {}
    encoder = load_encoder(model.config.text_encoder)
    sets = [learnt_name_set(read_pairs(tokens)[0], params.learnt_names)]
    sets += [read_prompt_set(path) for path in params.sets]
    metrics: dict[str, float] = {}
    for prompt_set in sets:
        texts = [prompt.text for prompt in prompt_set.prompts]
        result = _sample(
            model, model.blank_text(len(texts)), encoder.condition(texts), params.set_attempts, params
        )
        images = to_uint8(vqgan.decode(result.codes.to(next(vqgan.parameters()).device)).cpu())
        metrics.update(set_metrics(reference, prompt_set, list(images.split(params.set_attempts))))
    return metrics


def conditioned_pairs(
    model: Dalle, tokens: Path, max_val: int, memory: MemoryTable | None = None
) -> tuple[PairSet, PairSet]:
    """Training and validation pairs of an encoder-conditioned model, from the tokenize stage's
    caption pairs (`emojich.train.pairs`); validation holds the names of held-out emoji."""
    cfg = model.config
    if not (tokens / PAIRS_TENSORS).is_file():
        raise ValueError(
            f"the {cfg.text_encoder} model needs caption pairs; set tokenize.text.encoder: {cfg.text_encoder}"
        )
    rows, codes, vectors = read_pairs(tokens)
    if vectors.shape[-1] != cfg.condition_dim:
        raise ValueError(f"caption vectors are {vectors.shape[-1]}-d, the model reads {cfg.condition_dim}")
    if len(codes) and int(codes.max()) >= cfg.image_vocab_size:
        raise ValueError("caption pairs hold codes of another image tokenizer than this model's")

    def subset(chosen: list[int]) -> PairSet:
        references = None
        if cfg.reference_codes and memory is not None:
            # Each training pair reads its own emoji's drawing (a recoloured one the uncoloured
            # original); a held-out emoji's, the drawing its caption finds, as at sampling time.
            slots = memory.pair_slots[chosen]
            found = model.caption_memory.nearest_slot(model.caption_memory.query(vectors[chosen]))
            references = memory.slot_codes[torch.where(slots >= 0, slots, found)]
        return PairSet(
            model.blank_text(len(chosen)),
            codes[chosen].long(),
            [rows[i]["caption"] for i in chosen],
            0,
            vectors[chosen],
            references,
        )

    train = [i for i, row in enumerate(rows) if row["split"] == "train"]
    val = [i for i, row in enumerate(rows) if row["split"] != "train" and row["kind"] == "name"][:max_val]
    return subset(train), subset(val)


def resume_dir(out: Path) -> Path:
    """Where a run of `out` keeps its resume state: data/finetune -> data/cache/finetune."""
    return out.parent / "cache" / out.name


def finetune(
    params: FinetuneParams,
    tokens: Path = TOKENS,
    out: Path = OUT,
    metrics: Path | None = None,
    resume: Path | None = None,
) -> dict:
    """Train and write the outputs; returns the provenance record. Under torch.distributed every
    rank calls this and rank 0 alone writes (the others return an empty dict). Metrics go to `metrics` (default
    `out/metrics.json`), resume state to `resume` (default `resume_dir(out)`)."""
    device = distributed.local_device(resolve_device(params.device))
    main = distributed.is_main()
    index, codes = read_split(tokens)
    captions = [row["caption"] for row in index]
    tokenizer = TextTokenizer.load(tokens / "bpe.json")
    vqgan = VQGan.load(tokens / "vqgan.safetensors").eval()
    torch.manual_seed(params.train.seed)
    memory = None
    if DalleConfig.preset(params.model.preset).conditioned and (tokens / PAIRS_TENSORS).is_file():
        memory = memory_table(*read_pairs(tokens))
    model, variant = build_model(params.model, tokenizer, vqgan, memory)
    model.to(device)
    frozen = freeze_for_finetune(model, params.freeze)
    cfg = model.config

    def subset(split: str, per_caption: int = 0, limit: int | None = None) -> PairSet:
        rows = [i for i, row in enumerate(index) if row["split"] == split]
        keep = limit_per_caption([index[i]["id"] for i in rows], [captions[i] for i in rows], per_caption)
        rows = [rows[k] for k in keep][:limit]
        return build_pairs(
            [captions[i] for i in rows], codes[rows], tokenizer, cfg.text_seq_length, cfg.image_vocab_size
        )

    if cfg.conditioned:
        if not params.model.weights and model.caption_memory is not None and memory is not None:
            # From scratch: fill the caption memory (a resumed run restores it with the checkpoint).
            model.caption_memory.set_keys(memory.keys, memory.key_slots, memory.slot_codes)
        train, val = conditioned_pairs(model, tokens, params.eval.max_val_pairs, memory)
        if not params.model.weights and model.caption_projection is not None:
            # From scratch: whiten by the training captions.
            model.caption_projection.fit_whitening(
                torch.unique(model.attribute_vectors(train.conditions), dim=0)
            )
    else:
        train = subset("train", params.images_per_caption)
        val = subset("val", limit=params.eval.max_val_pairs)
    if len(train) == 0:
        raise ValueError("the training split is empty: nothing to fine-tune on")
    log.info(
        "%d training pairs (%d captions truncated), %d validation pairs",
        len(train),
        train.truncated,
        len(val),
    )

    checkpoints = resume or resume_dir(out)
    trainer = Trainer(
        model, pair_loss(train, device, params.caption_dropout), len(train), params.train, device
    )
    same_run = False
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (checkpoints / "samples").mkdir(parents=True, exist_ok=True)
        key = run_key(params, tokens)
        key_file = checkpoints / "run.key"
        same_run = key_file.is_file() and key_file.read_text().strip() == key
        if not same_run:  # another run's leftovers: start clean
            (checkpoints / "last.pt").unlink(missing_ok=True)
            for stale in [*(checkpoints / "samples").glob("*.png"), *(checkpoints / "plots").glob("*.csv")]:
                stale.unlink()
            write_text_atomic(key_file, key + "\n")
    # Rank 0 decides; every rank then resumes from the same checkpoint, or none does.
    if distributed.broadcast_from_main(same_run):
        trainer.resume(checkpoints)
    if not main:
        trainer.run(checkpoints)
        return {}

    train_log = CsvLog(checkpoints / "plots" / "train.csv", ["step", "loss", "loss_text", "loss_image", "lr"])
    eval_log = CsvLog(
        checkpoints / "plots" / "eval.csv",
        [
            "step",
            "val_loss",
            "val_loss_text",
            "val_loss_image",
            "caption_loss",
            "caption_loss_floor",
            "caption_top1",
        ],
    )
    _restore_logs(trainer.step, train_log, eval_log)

    def evaluate(step: int) -> dict[str, float]:
        losses = validation_loss(model, val, params.train.batch_size, device) if len(val) else {}
        cap = {"loss": float("nan"), "top1": float("nan"), "floor": float("nan")}
        if len(val) and not cfg.conditioned:  # retired for the encoder-conditioned demo: see `summary`
            scored = val.spread(params.eval.caption_pairs)
            cap = caption_loss(model, scored, params.eval.caption_candidates, device, seed=params.eval.seed)
        row = {
            "step": step,
            "val_loss": losses.get("loss", float("nan")),
            "val_loss_text": losses.get("text", float("nan")),
            "val_loss_image": losses.get("image", float("nan")),
            "caption_loss": cap["loss"],
            "caption_top1": cap["top1"],
            "caption_loss_floor": cap["floor"],
        }
        eval_log.add(**row)
        save_png(
            sample_sheet(model, vqgan, tokenizer, params.eval, device),
            checkpoints / "samples" / f"step_{step:06d}.png",
        )
        return row

    if trainer.step == 0:
        evaluate(0)
    bar = progress_bar(total=trainer.total_steps, initial=trainer.step, desc="finetune", unit="step")

    def on_step(record: StepLog) -> None:
        step = record.step + 1
        train_log.add(
            step=step,
            loss=record.loss,
            loss_text=record.parts["text"],
            loss_image=record.parts["image"],
            lr=record.lr,
        )
        bar.update(1)
        bar.set_postfix(loss=f"{record.loss:.3f}")
        if params.eval.every and step % params.eval.every == 0 and step < trainer.total_steps:
            evaluate(step)

    trainer.run(checkpoints, on_step=on_step)
    bar.close()
    final = evaluate(trainer.total_steps)

    origin = combine([file_origin(params.model.weights), safetensors_origin(tokens / "vqgan.safetensors")])
    model.save(out / "model.safetensors", {ORIGIN_KEY: origin})
    _publish_logs(checkpoints, out, trainer.total_steps)
    first_eval = eval_log.rows[0]
    record = {
        "model": variant,
        "preset": params.model.preset,
        ORIGIN_KEY: origin,
        "freeze": params.freeze,
        "caption_dropout": params.caption_dropout,
        "images_per_caption": params.images_per_caption,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "frozen_tensors": len(frozen["frozen"]),
        "parameters": model.num_parameters(),
        "steps": trainer.total_steps,
        "train_pairs": len(train),
        "val_pairs": len(val),
        "captions_truncated": train.truncated + val.truncated,
        "val_loss_start": float(first_eval[1]),
        "val_loss": final["val_loss"],
        "val_loss_text": final["val_loss_text"],
        "val_loss_image": final["val_loss_image"],
        "checkpoint_sha256": sha256_file(out / "model.safetensors"),
    }
    if cfg.conditioned:
        record.update(generalisation(model, vqgan, tokens, params.eval))
    else:
        record.update(
            {
                "caption_loss": final["caption_loss"],
                "caption_loss_floor": final["caption_loss_floor"],
                "caption_top1": final["caption_top1"],
                "caption_top1_chance": round(
                    1.0 / min(params.eval.caption_candidates, max(len(set(val.captions)), 1)), 6
                ),
                "caption_loss_chance": chance_caption_loss(
                    min(params.eval.caption_candidates, len(set(val.captions)))
                )
                if len(val)
                else float("nan"),
            }
        )
    record = {k: round(v, 6) if isinstance(v, float) else v for k, v in record.items()}
    write_records(metrics or out / "metrics.json", summary(record), out / PROVENANCE_FILE, record)
    return record


# The numbers a person compares between runs (the rest stays in the provenance): what an
# encoder-conditioned model draws for learnt names and the evaluation sets; for a BPE model (the
# paper profile), the caption loss, which a BPE model's text side can still explain.
HEADLINE_ENCODER = {
    "learnt_top10": "learnt",
    "phrasings_top10": "phrasings",
    "colours_hit": "colours",
    "appendix_prompts_top10": "appendix",
    "val_loss": "val_loss",
    "steps": "steps",
}
HEADLINE_BPE = (
    "val_loss_start",
    "val_loss",
    "caption_loss",
    "caption_loss_floor",
    "caption_top1",
    "caption_top1_chance",
    "steps",
)


def summary(record: dict) -> dict:
    return pick(record, HEADLINE_ENCODER if "learnt_top10" in record else HEADLINE_BPE)


def _publish_logs(resume: Path, out: Path, last_step: int) -> None:
    """Copy the finished run's sheets and CSV rows into the outputs, nothing of an older run."""
    for name in LOGGED:
        shutil.rmtree(out / name, ignore_errors=True)
        (out / name).mkdir(parents=True)
    for sheet in sorted((resume / "samples").glob("step_*.png")):
        if int(sheet.stem.removeprefix("step_")) <= last_step:
            write_bytes_atomic(out / "samples" / sheet.name, sheet.read_bytes())
    for table in sorted((resume / "plots").glob("*.csv")):
        write_bytes_atomic(out / "plots" / table.name, table.read_bytes())


def _restore_logs(step: int, *logs: CsvLog) -> None:
    """On resume, keep the rows logged up to the checkpoint's step (later ones are recomputed)."""
    for csv_log in logs:
        if step and csv_log.path.is_file():
            with open(csv_log.path, encoding="utf-8", newline="") as handle:
                rows = list(csv.reader(handle))[1:]
            csv_log.rows = [row for row in rows if int(row[0]) <= step]


def main() -> None:
    setup_logging()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    params = from_dict(FinetuneParams, load_section("finetune"), "finetune")
    if params.nproc_per_node > 1 and not distributed.launched():
        sys.exit(distributed.relaunch("stages.finetune", sys.argv[1:], params.nproc_per_node))
    with distributed.process_group(resolve_device(params.device)):
        metrics = finetune(params, metrics=METRICS_DIR / "finetune.json")
    if metrics:
        log.info("%s", metrics)


if __name__ == "__main__":
    main()
