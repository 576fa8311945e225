"""The model files follow the published conventions: every file states its norm_eps (Llama-2/3: 1e-5,
the video models OpenSora's 1e-6 with non-affine LayerNorms), ModelConfig's default is the Llama
value, and the video block's options (adaLN, qk-norm, affine norms) change the parameters, the
FLOPs and the schema's checks as documented. In-process, no ranks (well under a second)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from harness.flops import step_flops
from harness.schema import validate
from methods.common.config import InvalidConfig, ModelConfig, Problem, Workload
from methods.common.layers import build_reference
from methods.common.video import video_layer_shapes

MODELS = Path(__file__).resolve().parents[1] / "conf" / "model"
FILES = {f.stem: yaml.safe_load(f.read_text()) for f in sorted(MODELS.glob("*.yaml"))}
# published values: HF config.json rms_norm_eps of Llama-2-7b-hf and Meta-Llama-3-8B; OpenSora STDiT's
# LayerNorm(eps=1e-6, elementwise_affine=False); the tiny models follow their family
NORM_EPS = {"llama": 1e-5, "linear": 1e-5, "hybrid": 1e-5, "video": 1e-6}


def test_every_model_file_states_its_norm_eps():
    for name, cfg in FILES.items():
        assert "norm_eps" in cfg, f"conf/model/{name}.yaml leaves norm_eps to ModelConfig's default"
        assert cfg["norm_eps"] == NORM_EPS[cfg["kind"]], (name, cfg["norm_eps"])
    assert FILES["llama2_7b"]["norm_eps"] == FILES["llama3_8b"]["norm_eps"] == 1e-5


def test_model_config_default_is_the_llama_files_value():
    default = ModelConfig("m", hidden=8, heads=2, kv_heads=2, head_dim=4, ffn_hidden=8).norm_eps
    assert default == FILES["llama3_8b"]["norm_eps"]


def test_video_files_use_opensora_layer_norms_and_leave_adaln_qk_norm_off():
    for name, cfg in FILES.items():
        if cfg["kind"] == "video":
            assert (cfg["norm_affine"], cfg["adaln"], cfg["qk_norm"]) == (False, False, False), name


def video_model(**extra) -> ModelConfig:
    return ModelConfig(
        "v",
        hidden=16,
        heads=4,
        kv_heads=2,
        head_dim=4,
        ffn_hidden=32,
        layers=2,
        kind="video",
        norm_eps=1e-6,
        extra=extra,
    )


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"norm_affine": True},
        {"adaln": True, "qk_norm": True},
        {"adaln": True, "qk_norm": True, "norm_affine": True},
    ],
)
def test_video_layer_shapes_are_the_reference_parameters(extra):
    """video_layer_shapes (parameter sync, memory models) lists the reference's parameters in order."""
    m = video_model(**extra)
    model = build_reference(m, workload=Workload("video", batch_size=2, frames=2, spatial=3, causal=False))
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == m.layers * video_layer_shapes(m)
    assert (model.cond is not None) == bool(extra.get("adaln"))
    norm = model.blocks[0].spatial.norm1
    assert norm.eps == 1e-6 and norm.elementwise_affine == bool(extra.get("norm_affine"))


def test_adaln_flops_are_one_modulation_linear_per_block_and_sample():
    w = Workload("video", batch_size=2, frames=4, spatial=8, causal=False)
    plain, dit = (Problem("dsp", m, w, 2) for m in (video_model(), video_model(adaln=True, qk_norm=True)))
    m = plain.model
    # forward + backward (3x) of Linear(C, 6C) on B rows, in 2 blocks per layer
    assert (
        step_flops(dit)[0] - step_flops(plain)[0]
        == 3 * m.layers * 2 * 2 * w.batch_size * m.hidden * 6 * m.hidden
    )
    assert math.isclose(step_flops(dit)[1], step_flops(dit)[0])


def config(**model) -> OmegaConf:
    return OmegaConf.create({"world_size": 2, "model": model})


def test_schema_types_and_checks_the_convention_options():
    typed = validate(config(kind="video", adaln="true", qk_norm="false", norm_affine="false"))
    assert (typed.model.adaln, typed.model.qk_norm, typed.model.norm_affine) == (True, False, False)
    assert validate(config(kind="linear", decay=True, decay_rule="scaled")).model.decay_rule == "scaled"
    with pytest.raises(InvalidConfig, match="model.decay_rule must be one of retnet, scaled"):
        validate(config(kind="linear", decay=True, decay_rule="lightning"))
    with pytest.raises(InvalidConfig, match="model.adaln=true applies to video models only"):
        validate(config(kind="llama", adaln=True))
    with pytest.raises(InvalidConfig, match="model.qk_norm"):
        validate(config(kind="video", qk_norm="maybe"))
