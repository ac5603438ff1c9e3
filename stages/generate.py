"""Stage `generate`: one cell of the sampling grid (top-k, top-p, temperature, seed) per run.

dvc.yaml expands the grid of `params.yaml` with `matrix` and passes each cell's values on the
command line, so `dvc.lock` records them in the stage's `cmd`. Everything else comes from the
`generate` section of params.yaml.

Outputs, under `data/generated/<cell>/`:
- `kept/`: the best `keep_best` images per prompt (lowest mean NLL), PNG 512 px + JSON sidecar;
- `all/`: `attempts.jsonl` (score and rank of every attempt), `codes.safetensors` (their image
  codes, int16 [prompts, attempts, grid²]), `prompts.json` (per-prompt statistics) and, only with
  `save_all`, every attempt's PNG + sidecar;
- `sheet.png`: contact sheet, one row of kept images per prompt (a DVC plot);
- `provenance.json`: everything the cell measured and how (cell values, upscaler, prompt checks,
  every caption-retrieval number);

and `metrics/generate/<cell>.json` (`--metrics`): the few rounded numbers a person compares across
cells and experiments. The sampling speed differs run to run, so it is only logged: a file of it
under data/generated/ would change the folder `segment` and `stickers` read on every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch

from emojich.fidelity.retrieval import load_reference
from emojich.foundation import distributed
from emojich.foundation.device import resolve_device
from emojich.foundation.logs import setup_logging
from emojich.foundation.params import from_dict, load_section
from emojich.foundation.records import METRICS_DIR, PROVENANCE_FILE, pick
from emojich.foundation.storage import write_json_atomic
from emojich.generate.grid import SamplingCell
from emojich.generate.loading import load_models
from emojich.generate.prompts import read_prompts
from emojich.generate.run import write_cell
from emojich.models.precision import check_weights_dtype
from emojich.text.prompt_sets import read_prompt_set

log = logging.getLogger("stages.generate")


@dataclasses.dataclass
class GridParams:
    """Read by dvc.yaml's `matrix` only; the stage gets its one cell on the command line."""

    top_k: list[int] = dataclasses.field(default_factory=lambda: [32, 512])
    top_p: list[float] = dataclasses.field(default_factory=lambda: [0.995])
    temperature: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    seed: list[int] = dataclasses.field(default_factory=lambda: [42])


@dataclasses.dataclass
class GenerateParams:
    prompts: str = "prompts/demo.txt"
    attempts: int = 8  # per prompt and cell; the report advises ~512 on a GPU
    keep_best: int = 4
    save_all: bool = False  # PNGs of every attempt too (all/ always has their codes and scores)
    batch_size: int = 16
    sheet_thumb: int = 128  # px per image on the contact sheet
    checkpoint: str = "data/finetune/model.safetensors"
    tokens: str = "data/tokens"  # bpe.json and vqgan.safetensors
    upscaler: str | None = "data/upscaled/rrdbnet.safetensors"
    # Guidance scale; 1 = off (the report). See `sampling.sample`: from the subject alone for a model
    # with a caption memory, from an empty caption (needs caption dropout in training) otherwise.
    guidance: float = 1.0
    threads: int = 0  # torch threads; 0 = torch default
    device: str = "auto"
    # checkpoint (as stored) | bf16 | int8 (the transformer's linears; emojich.models.precision)
    weights_dtype: str = "checkpoint"
    # Processes sharing the cell's sampling batches; > 1 relaunches the stage under torchrun.
    # The outputs are the same bytes whatever the count.
    nproc_per_node: int = 1
    grid: GridParams = dataclasses.field(default_factory=GridParams)
    # Evaluation sets of prompts the model never trained on (prompts/*.tsv): each cell samples
    # `eval_attempts` images per prompt and reports how many show the intended emoji.
    eval_sets: list[str] = dataclasses.field(default_factory=list)
    eval_attempts: int = 4

    def __post_init__(self) -> None:
        for name in ("attempts", "keep_best", "batch_size", "sheet_thumb", "eval_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"generate.{name} must be an integer >= 1, got {value!r}")
        distributed.check_nproc(self.nproc_per_node, "generate.nproc_per_node")
        check_weights_dtype(self.weights_dtype, "generate.weights_dtype")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--top-k", type=int, required=True)
    parser.add_argument("--top-p", type=float, required=True)
    parser.add_argument("--temperature", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", type=Path, help="default: data/generated/<cell name>")
    parser.add_argument("--metrics", type=Path, help="default: metrics/generate/<cell name>.json")
    parser.add_argument("--params", default="params.yaml")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        params = from_dict(GenerateParams, load_section("generate", args.params), "generate")
        cell = SamplingCell(args.top_k, args.top_p, args.temperature, args.seed, params.guidance)
        prompt_list = read_prompts(params.prompts)
        prompt_sets = [read_prompt_set(path) for path in params.eval_sets]
        if params.nproc_per_node > 1 and not distributed.launched():
            return distributed.relaunch(
                "stages.generate", sys.argv[1:] if argv is None else argv, params.nproc_per_node
            )
        if params.threads > 0:
            torch.set_num_threads(params.threads)
        tokens = Path(params.tokens)
        with distributed.process_group(resolve_device(params.device)) as device:
            models = load_models(
                params.checkpoint,
                tokens / "bpe.json",
                tokens / "vqgan.safetensors",
                params.upscaler,
                device,
                params.weights_dtype,
            )
            out = args.out or Path("data/generated") / cell.name
            metrics = write_cell(
                out,
                models,
                prompt_list,
                cell,
                attempts=params.attempts,
                keep_best=params.keep_best,
                save_all=params.save_all,
                batch_size=params.batch_size,
                thumb=params.sheet_thumb,
                reference=load_reference(tokens) if distributed.is_main() else None,
                record=PROVENANCE_FILE,
                timing_file=None,
                prompt_sets=prompt_sets,
                set_attempts=params.eval_attempts,
            )
        if metrics:  # rank 0: write_cell wrote the whole record as provenance.json; this is its summary
            write_json_atomic(
                args.metrics or METRICS_DIR / "generate" / f"{cell.name}.json", summary(metrics)
            )
    except (ValueError, KeyError, FileNotFoundError) as error:
        # Bad parameters or missing inputs: one clear line, not a traceback.
        log.error("%s", error)
        return 2
    if metrics:  # rank 0
        log.info("%s", {key: value for key, value in metrics.items() if key != "timing"})
        log.info("sampling: %s", metrics["timing"])
    return 0


# Caption retrieval as a person compares it (record key -> metric name): the share of images
# whose intended emoji is in the top 10 of the catalogue for learnt names, everyday phrasings and
# the report's appendix (prompts with a related emoji), colour hits, and chance; held-out names
# and real emoji's own retrieval stay in provenance.json.
HEADLINE = {
    "train_top10": "learnt",
    "phrasings_top10": "phrasings",
    "colours_hit": "colours",
    "appendix_prompts_top10": "appendix",
    "chance_top10": "chance",
}


def summary(record: dict) -> dict:
    """The numbers a person compares between cells (the rest stays in provenance.json)."""
    return {
        **pick(record.get("fidelity", {}), HEADLINE),
        **pick(record, {"mean_score": "score", "diversity": "diversity"}),
    }


if __name__ == "__main__":
    sys.exit(main())
