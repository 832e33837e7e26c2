"""The layer policy on the naming conventions of diffusion checkpoints: first / last layers under a wrapper prefix,
and plain rounding (no clipping search) at INT4 for convolution kernels and the conditioning projections."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

import arrow_quant_v2 as aq

PREFIX = "model.diffusion_model."


def ldm_checkpoint(path, rng):
    shapes = {
        "input_blocks.0.0.weight": (64, 4, 3, 3),  # first layer
        "input_blocks.1.0.in_layers.2.weight": (64, 64, 3, 3),
        "input_blocks.1.0.emb_layers.1.weight": (128, 256),  # timestep embedding -> scale and shift
        "input_blocks.1.0.out_layers.3.weight": (64, 64, 3, 3),
        "input_blocks.1.1.proj_in.weight": (64, 128),  # a linear layer
        "out.2.weight": (4, 64, 3, 3),  # last layer
    }
    save_file({PREFIX + n: rng.standard_normal(s).astype(np.float32) * 0.05 for n, s in shapes.items()}, str(path))
    return path


def encodings(path):
    rows = pq.read_table(path, columns=["name", "encoding"]).to_pylist()
    return {r["name"].removeprefix(PREFIX): r["encoding"] for r in rows}


def test_first_last_layers_and_embedding_projections_under_a_wrapper_prefix(quantizer, tmp_path, rng):
    ckpt = ldm_checkpoint(tmp_path / "unet.safetensors", rng)
    out = tmp_path / "unet.parquet"
    report = quantizer.quantize_diffusion_model(ckpt, out, aq.DiffusionQuantConfig())
    got = encodings(out)
    assert got["input_blocks.0.0.weight"] == "f16" and got["out.2.weight"] == "f16"
    assert got["input_blocks.1.1.proj_in.weight"] == "int4_2l"
    assert got["input_blocks.1.0.out_layers.3.weight"] == "int4"
    assert got["input_blocks.1.0.in_layers.2.weight"] == "int4"
    assert got["input_blocks.1.0.emb_layers.1.weight"] == "int4"
    groups = {r["name"].removeprefix(PREFIX): r["group_size"] for r in pq.read_table(out).to_pylist()}
    assert groups["input_blocks.1.0.emb_layers.1.weight"] == 32
    assert groups["input_blocks.1.0.in_layers.2.weight"] == 32
    # a run that names its method keeps it for every layer
    out = tmp_path / "mse.parquet"
    quantizer.quantize_diffusion_model(ckpt, out, aq.DiffusionQuantConfig(method="mse"))
    rows = {r["name"].removeprefix(PREFIX): r for r in pq.read_table(out).to_pylist()}
    assert rows["input_blocks.1.0.in_layers.2.weight"]["group_size"] == 128  # the flat layout's default
    kept = {layer["name"].removeprefix(PREFIX): layer["kept"] for layer in report["layers"]}
    assert "first or last layer ('input_blocks.0.0.')" == kept["input_blocks.0.0.weight"]
    assert "first or last layer ('out.')" == kept["out.2.weight"]


def test_unclipped_patterns_can_be_changed_and_hold_under_mixed_precision(quantizer, tmp_path, rng):
    ckpt = ldm_checkpoint(tmp_path / "unet.safetensors", rng)
    assert aq.DiffusionQuantConfig().unclipped_patterns == [
        "emb_layers", "label_emb", "time_emb_proj", "adaln", "y_embedder", "time_in", "guidance_in", "vector_in",
        "_mod.", "modulation", "time_projection", "time_embed"]
    out = tmp_path / "plain.parquet"
    quantizer.quantize_diffusion_model(
        ckpt, out, aq.DiffusionQuantConfig(unclipped_patterns=[], auto_mixed_precision=False)
    )
    assert encodings(out)["input_blocks.1.0.emb_layers.1.weight"] == "int4_2l"
    # mixed precision picks the width; the layer keeps plain rounding in flat groups at 2 and 4 bits
    out = tmp_path / "mixed.parquet"
    quantizer.quantize_diffusion_model(
        ckpt, out, aq.DiffusionQuantConfig(target_bits_per_weight=5.0, quality_floor=0.0, keep_first_last=False)
    )
    assert encodings(out)["input_blocks.1.0.emb_layers.1.weight"] in ("int2", "int4", "int8_2l", "f16")
    with pytest.raises(aq.ConfigurationError, match="unclipped_patterns"):
        aq.DiffusionQuantConfig(unclipped_patterns=[""])
