"""Int8 weights for sampling: the layer, the swap, the parameter, and the CPU decode benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from emojich.cli import main
from emojich.foundation.params import from_dict
from emojich.generate.sampling import generate
from emojich.models.dalle import Dalle, DalleConfig
from emojich.models.int8 import Int8Linear, quantize_linears, quantize_rows
from emojich.models.precision import WEIGHTS_DTYPES, check_weights_dtype, set_weights_dtype
from stages.generate import GenerateParams

ROOT = Path(__file__).resolve().parents[1]


def _linear(in_features: int = 64, out_features: int = 48, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features).to(torch.bfloat16)


def test_quantized_rows_are_symmetric_per_output_channel():
    weight = torch.randn(6, 32)
    weight[2] = 0.0
    codes, scales = quantize_rows(weight, torch.bfloat16)
    assert codes.dtype == torch.int8 and codes.shape == (6, 32)
    assert scales.dtype == torch.bfloat16 and scales.shape == (6,)
    assert int(codes.abs().max()) <= 127 and not codes[2].any()
    # Every row uses (nearly) the whole range; the codes times their scale give back the weight.
    assert (codes.abs().amax(dim=1)[[0, 1, 3, 4, 5]] >= 126).all()
    error = (codes.float() * scales.float()[:, None] - weight).abs()
    assert (error <= scales.float()[:, None] * 0.5 + 1e-6).all()


def test_int8_linear_keeps_shapes_and_dtypes():
    layer = Int8Linear.from_linear(_linear())
    assert layer.codes.dtype == torch.int8 and layer.scales.dtype == torch.bfloat16
    assert layer.bias is not None and layer.bias.dtype == torch.bfloat16
    x = torch.randn(2, 3, 64).to(torch.bfloat16)
    out = layer(x)
    assert out.shape == (2, 3, 48) and out.dtype == torch.bfloat16
    # A non-contiguous input and an fp32 one give the same products.
    wide = torch.randn(3, 2, 64).to(torch.bfloat16).transpose(0, 1)
    assert torch.equal(layer(wide), layer(wide.contiguous()))
    assert layer(x.float()).dtype == torch.float32
    assert not list(layer.parameters())  # nothing to train


def test_int8_linear_stays_close_to_the_float_layer():
    linear = _linear(256, 128)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(16, 256).to(torch.bfloat16)
    exact = x.float() @ layer.dequantized(torch.float32).T + layer.bias.float()
    # The kernel computes what its codes say, up to bf16 output rounding.
    assert torch.allclose(layer(x).float(), exact, rtol=1e-2, atol=1e-2)
    # And the codes say nearly what the float weights do: int8 rounding is ~1 % of a product.
    reference = (x.float() @ linear.weight.float().T + linear.bias.float()).float()
    relative = (layer(x).float() - reference).norm() / reference.norm()
    assert relative < 0.02


def test_quantize_linears_swaps_only_the_transformers_linear_layers():
    model = Dalle(DalleConfig.preset("tiny")).to(torch.bfloat16)
    before = {name: module for name, module in model.named_modules()}
    untouched = {
        name: param.clone() for name, param in model.named_parameters() if not name.startswith("transformer.")
    }
    norms = {name: p.clone() for name, p in model.transformer.named_parameters() if "layernorm" in name}
    assert quantize_linears(model.transformer) == 4 * model.config.num_layers
    after = dict(model.named_modules())
    for name, module in after.items():
        if isinstance(module, Int8Linear):
            assert type(before[name]) is nn.Linear and name.startswith("transformer.layers.")
        else:
            assert module is before[name]  # layer norms, embeddings, the logits head: the same objects
    assert type(model.to_logits[1]) is nn.Linear
    for name, param in model.named_parameters():
        if name in untouched:
            assert torch.equal(param, untouched[name])
        if name.removeprefix("transformer.") in norms:
            assert torch.equal(param, norms[name.removeprefix("transformer.")])


def test_weights_dtype_modes():
    model = Dalle(DalleConfig.preset("tiny-encoder"))
    assert set_weights_dtype(model, "checkpoint") is model
    assert model.transformer.layers[0].mlp.dense_h_to_4h.weight.dtype == torch.float32
    set_weights_dtype(model, "int8")
    assert isinstance(model.transformer.layers[0].attention.query_key_value, Int8Linear)
    assert model.text_embeddings.weight.dtype == torch.bfloat16
    # The caption side stays fp32, and still reads the caption.
    assert model.caption_projection.whitening.dtype == torch.float32
    assert next(model.caption_projection.parameters()).dtype == torch.float32
    text = model.blank_text(2)
    condition = torch.nn.functional.normalize(torch.randn(2, 2, 512), dim=-1)
    with torch.inference_mode():
        logits = model(text, condition=condition)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_int8_generation_is_deterministic():
    torch.manual_seed(0)
    model = set_weights_dtype(Dalle(DalleConfig.preset("tiny")), "int8")
    text = [5, 6, 7, 0, 0, 0, 0, 0]
    first = generate(model, text, images_num=3, top_k=8, seed=7, batch_size=2, progress=False)
    second = generate(model, text, images_num=3, top_k=8, seed=7, batch_size=3, progress=False)
    assert torch.equal(first.codes, second.codes)
    assert torch.equal(first.scores, second.scores)
    other = generate(model, text, images_num=3, top_k=8, seed=8, batch_size=2, progress=False)
    assert not torch.equal(first.codes, other.codes)


@pytest.mark.parametrize("value", ["fp8", "int4", "", None, "INT8"])
def test_weights_dtype_is_validated_in_one_line(value):
    with pytest.raises(ValueError) as error:
        from_dict(GenerateParams, {"weights_dtype": value}, "generate")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("generate.weights_dtype must be one of checkpoint, bf16, int8")
    assert repr(value) in message
    for good in WEIGHTS_DTYPES:
        assert from_dict(GenerateParams, {"weights_dtype": good}, "generate").weights_dtype == good
        assert check_weights_dtype(good) == good


def test_cli_refuses_an_unknown_weights_dtype_in_one_line(tmp_path, capsys):
    assert main(["generate", "ёж", "--out", str(tmp_path / "o"), "--weights-dtype", "fp8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--weights-dtype" in err[0] and "fp8" in err[0]


def test_cpu_decode_benchmark_quick_prints_its_report():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cpu_decode.py"), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    report = json.loads(result.stdout)
    assert report["machine"]["bandwidth_gbps"] > 0 and report["machine"]["gemm_gflops"] > 0
    cases = {(row["mode"], row["batch"]): row for row in report["cases"]}
    assert set(cases) == {("bf16", 1), ("bf16", 4), ("int8", 1), ("int8", 4)}
    for row in cases.values():
        for key in ("ms_per_step", "s_per_image", "bytes_per_step", "bandwidth_share", "flops_per_step"):
            assert row[key] > 0
        assert 0 < row["gemm_share"] < 1
        assert row["bytes_per_step"] == row["weight_bytes"] + row["kv_bytes"]
    # Int8 halves the linear layers' bytes, so a step reads clearly less.
    assert cases["int8", 1]["weight_bytes"] < 0.7 * cases["bf16", 1]["weight_bytes"]
    assert (
        cases["int8", 4]["flops_per_step"]
        == cases["bf16", 4]["flops_per_step"]
        == 4 * cases["bf16", 1]["flops_per_step"]
    )
    assert set(report["ratios"]["int8/bf16"]) == {"1", "4"}
    assert {row["mode"] for row in report["experiments"]} == {
        "bf16-as-before",
        "bf16-plain-linears",
        "bf16-matmul-attention",
        "bf16-text-per-image",
    }
    # One caption's batch reads its text keys once.
    assert cases["bf16", 4]["text_keys_shared"] and not cases["bf16", 1]["text_keys_shared"]
    assert cases["bf16", 4]["kv_bytes"] < 4 * cases["bf16", 1]["kv_bytes"]
    assert set(report["machine"]["bandwidth_readers_gbps"]) == {"sum", "gemv"}
    assert all(row["cpu_share"] >= 0 for row in report["cases"])  # clock ticks: 0 at tiny shapes
    assert {row["mode"] for row in report["kernels"]} == {"bf16", "int8", "bf16-packed"}
