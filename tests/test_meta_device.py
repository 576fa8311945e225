"""The meta-device tier: every GPU code path, run on CPU before it meets a GPU.

Each case is a whole emulate job (counted step, warm-up, timed steps) with every tensor of the method,
the reference block and the inputs on the `meta` device, over the fake process group, with a CUDA
attention kernel forced (cudnn, cuda_flash, cuda_efficient through their aten ops' meta kernels, and
math). A CPU tensor meeting a meta tensor raises here exactly as it would meet a CUDA tensor on a
GPU; wrong argument lists or return positions of the private aten ops raise too. The row's counted
bytes must equal the cost model and the memory tracker's must equal the memory model.

FSDP2 refuses meta parameters, so the ZeRO-3 variants (and Odysseus) get the nearest check that
runs: the same job on CPU data with `meta` as torch's default device, so that any tensor made
without the device of the data it meets lands on meta and fails. Every variant runs that check too.

All jobs run in this process (no ranks to spawn): a few hundred cases take well under a minute."""

from __future__ import annotations

import traceback
import warnings
from dataclasses import replace

import pytest

import methods
from harness.worker import Job, entry_single
from methods.common.config import ModelConfig, Problem, Workload

# one layer: a meta op costs about half a millisecond (Python meta kernels), so layers are what cost
TINY = ModelConfig("tiny", hidden=64, heads=8, kv_heads=4, head_dim=8, ffn_hidden=128, layers=1)
# the head sizes real jobs use: 64 (dsp_3b), 72 (dsp_720m), 128 (Llama, Linear-Llama3); kv_heads 1
# and 2 put fewer kv heads than ranks on Ulysses (repeated) and on the native-GQA kernels
HEAD_DIMS = {
    64: replace(TINY, name="hd64", hidden=128, heads=8, kv_heads=4, head_dim=64),
    72: replace(TINY, name="hd72", hidden=144, heads=8, kv_heads=4, head_dim=72),
    128: replace(TINY, name="hd128", hidden=256, heads=4, kv_heads=1, head_dim=128, rope_theta=500000.0),
}
LINEAR = replace(TINY, name="tiny_linear", kind="linear")
LINEAR_DECAY = replace(LINEAR, name="tiny_linear_decay", extra={"decay": True})
HYBRID = replace(
    TINY, name="tiny_hybrid", kind="hybrid", layers=2, extra={"hybrid_period": 2}
)  # linear, softmax
HYBRID_DECAY = replace(HYBRID, name="tiny_hybrid_decay", extra={"hybrid_period": 2, "decay": True})
VIDEO = ModelConfig(
    "tiny_video", hidden=32, heads=8, kv_heads=4, head_dim=4, ffn_hidden=64, layers=1, kind="video"
)
VIDEO_HD72 = replace(VIDEO, name="video_hd72", hidden=144, heads=4, kv_heads=4, head_dim=72)
VIDEO_DIT = replace(VIDEO, name="tiny_video_dit", extra={"adaln": True, "qk_norm": True})

GPU_KERNELS = ("cudnn", "cuda_flash", "cuda_efficient")  # flash-attn 2/3: no package installs here
# the variants whose attention is split into blocks of every shape (ring layouts, all-gather, USP)
# and Ulysses run at every real head size; the others at Llama's 128
ALL_HEAD_DIMS = ("ulysses", "ring-zigzag", "ring-stripe", "allgather_cp-zigzag", "usp-u2r2-ring_inner-stripe")


def llm(
    method: str,
    n: int,
    model: ModelConfig = TINY,
    causal: bool = True,
    seq_len: int = 64,
    dtype: str = "bfloat16",
    **options,
) -> Problem:
    return Problem(method, model, Workload(batch_size=2, seq_len=seq_len, causal=causal), n, dtype, options)


def video(
    method: str,
    n: int,
    model: ModelConfig = VIDEO,
    frames: int = 8,
    spatial: int = 12,
    dtype: str = "bfloat16",
    **options,
) -> Problem:
    return Problem(
        method,
        model,
        Workload("video", batch_size=1, frames=frames, spatial=spatial, causal=False),
        n,
        dtype,
        options,
    )


# every registered variant with the options that change its code path; ZeRO-3 ones are listed apart
VARIANTS: dict[str, callable] = {
    "ulysses": lambda **kw: llm("ulysses", 4, **kw),
    "ulysses-N8-kv4": lambda **kw: llm("ulysses", 8, **kw),  # kv_heads 4 < degree 8: kv heads repeated
    "tp_sp": lambda **kw: llm("tp_sp", 4, **kw),
    "ring-basic": lambda **kw: llm("ring", 4, layout="basic", **kw),
    "ring-zigzag": lambda **kw: llm("ring", 4, layout="zigzag", **kw),
    "ring-stripe": lambda **kw: llm("ring", 4, layout="stripe", **kw),  # L/N - 1 blocks
    "allgather_cp-zigzag": lambda **kw: llm("allgather_cp", 4, layout="zigzag", **kw),
    "allgather_cp-contiguous": lambda **kw: llm("allgather_cp", 4, layout="contiguous", **kw),
    "usp-u2r2-ulysses_inner": lambda **kw: llm("usp", 4, ulysses_degree=2, ring_degree=2, **kw),
    "usp-u2r2-ring_inner-stripe": lambda **kw: llm(
        "usp", 4, ulysses_degree=2, ring_degree=2, placement="ring_inner", layout="stripe", **kw
    ),
}
ZERO3_VARIANTS = {
    "ulysses-zero3": lambda **kw: llm("ulysses", 4, zero3=True, **kw),
    "ring-zero3": lambda **kw: llm("ring", 4, zero3=True, **kw),
    "allgather_cp-zero3": lambda **kw: llm("allgather_cp", 4, zero3=True, **kw),
    "usp-zero3": lambda **kw: llm("usp", 4, ulysses_degree=2, ring_degree=2, zero3=True, **kw),
    "odysseus": lambda **kw: llm("odysseus", 4, **kw),
    "lasp2-zero3": lambda **kw: llm("lasp2", 4, model=LINEAR, zero3=True, **kw),
}
LINEAR_CASES = {  # (problem, causal) on the linear and hybrid blocks
    "lasp2-linear": llm("lasp2", 4, model=LINEAR),
    "lasp2-linear-bidirectional": llm("lasp2", 4, model=LINEAR, causal=False),
    "lasp2-linear-decay": llm("lasp2", 4, model=LINEAR_DECAY),
    "lasp2h-hybrid": llm("lasp2", 4, model=HYBRID),
    "lasp2h-hybrid-bidirectional": llm("lasp2", 4, model=HYBRID, causal=False),
    "lasp2h-hybrid-decay": llm("lasp2", 4, model=HYBRID_DECAY),
    "lasp2-linear-hd128": llm(
        "lasp2", 4, model=replace(HEAD_DIMS[128], kind="linear", extra={"decay": True})
    ),
    "lasp1-linear-decay": llm("lasp1", 4, model=LINEAR_DECAY),
    "lasp1-linear": llm("lasp1", 4, model=LINEAR),
    "ulysses-linear-decay": llm("ulysses", 4, model=LINEAR_DECAY),
    "ulysses-hybrid-bidirectional": llm("ulysses", 4, model=HYBRID, causal=False),
    "tp_sp-linear-bidirectional": llm("tp_sp", 4, model=LINEAR, causal=False),
    "tp_sp-hybrid-decay": llm("tp_sp", 4, model=HYBRID_DECAY),
}
VIDEO_CASES = {
    "dsp": video("dsp", 4),
    "dsp-padded": video("dsp", 4, frames=6, spatial=10),  # neither divides by 4
    "dsp-hd72": video("dsp", 4, model=VIDEO_HD72),
    "ulysses-video-temporal": video("ulysses", 4, video_attention="temporal"),
    "ulysses-video-all": video("ulysses", 4, spatial=8, video_attention="all"),
    "ring-video": video("ring", 4),
    "tp_sp-video": video("tp_sp", 4),
    "dsp-dit": video("dsp", 4, model=VIDEO_DIT),  # adaLN and qk-norm
    "tp_sp-video-dit": video("tp_sp", 4, model=VIDEO_DIT),
}


def _valid(p: Problem) -> bool:
    try:
        methods.for_problem(p).validate(p)
    except methods.InvalidConfig:
        return False
    return True


def meta_cases() -> dict[str, tuple[Problem, str]]:
    """case id -> (problem, forced kernel) for the meta device; combinations a method refuses (TP-SP
    over more ranks than kv heads) are left out. Every variant: each GPU kernel in bf16, causal and
    not; math in bf16; the efficient kernel (the one CUDA kernel for float32) in float32; float16 on
    the automatic choice; and the real head sizes."""
    cases: dict[str, tuple[Problem, str]] = {}
    for name, make in VARIANTS.items():
        for causal in (True, False):
            for kernel in GPU_KERNELS:
                cases[f"{name}-causal{int(causal)}-bf16-{kernel}"] = (make(causal=causal), kernel)
        cases[f"{name}-bf16-math"] = (make(), "math")
        cases[f"{name}-f32-cuda_efficient"] = (make(dtype="float32"), "cuda_efficient")
        cases[f"{name}-f16-auto"] = (make(dtype="float16"), "auto")
        for head_dim, model in HEAD_DIMS.items():
            if (
                name != "ulysses-N8-kv4"
                and (name in ALL_HEAD_DIMS or head_dim == 128)
                and _valid(make(model=model))
            ):
                for kernel in GPU_KERNELS if name in ALL_HEAD_DIMS else ("cudnn",):
                    cases[f"{name}-hd{head_dim}-bf16-{kernel}"] = (make(model=model), kernel)
    for name, p in {**LINEAR_CASES, **VIDEO_CASES}.items():
        for kernel in GPU_KERNELS:
            cases[f"{name}-bf16-{kernel}"] = (p, kernel)
        cases[f"{name}-f32-auto"] = (replace(p, dtype="float32"), "auto")
    return cases


# ranks see different block schedules (causal blocks skipped, stripe's shifted masks, DSP's padded
# shards, LASP-1's chain ends): every rank of these plays once more, on cuDNN
EVERY_RANK = ("ring-basic", "ring-zigzag", "ring-stripe", "allgather_cp-zigzag", "usp-u2r2-ring_inner-stripe")
SYMMETRIC = set(EVERY_RANK)  # the same bytes on every rank: each rank's count equals the model


def rank_cases() -> dict[str, tuple[Problem, str, int]]:
    cases = {f"{name}-rank{r}": (VARIANTS[name](), "cudnn", r) for name in EVERY_RANK for r in range(1, 4)}
    cases.update(
        {
            f"{name}-rank{r}": (p, "cudnn", r)
            for name, p in (
                ("dsp-padded", VIDEO_CASES["dsp-padded"]),
                ("lasp1-linear-decay", LINEAR_CASES["lasp1-linear-decay"]),
            )
            for r in (0, 2, 3)
        }
    )
    return cases


META = meta_cases()
RANKS = rank_cases()
# the nearest check for what meta cannot run, and for every other variant too: CPU data, meta default
STRICT = {name: make(dtype="float32") for name, make in {**VARIANTS, **ZERO3_VARIANTS}.items()}
STRICT.update({name: replace(p, dtype="float32") for name, p in {**LINEAR_CASES, **VIDEO_CASES}.items()})


def _run(job: Job) -> dict:
    """One job's result, or {"error": ...} naming the exception and the innermost project frame."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return entry_single([job])[0]
    except Exception as err:  # noqa: BLE001 - reported by the test that reads this case
        frames = [
            f
            for f in traceback.extract_tb(err.__traceback__)
            if "/methods/" in f.filename or "/harness/" in f.filename
        ]
        where = (
            f" at {'/'.join(frames[-1].filename.rsplit('/', 2)[-2:])}:{frames[-1].lineno}" if frames else ""
        )
        return {"error": f"{type(err).__name__}: {err}{where}"}


@pytest.fixture(scope="module")
def meta_results() -> dict[str, dict]:
    return {
        cid: _run(
            Job(
                p,
                mode="emulate",
                device="meta",
                attn_backend=kernel,
                play_rank=_busiest(p),
                warmup=0,
                iters=1,
            )
        )
        for cid, (p, kernel) in META.items()
    }


@pytest.fixture(scope="module")
def rank_results() -> dict[str, dict]:
    return {
        cid: _run(
            Job(p, mode="emulate", device="meta", attn_backend=kernel, play_rank=rank, warmup=0, iters=1)
        )
        for cid, (p, kernel, rank) in RANKS.items()
    }


@pytest.fixture(scope="module")
def strict_results() -> dict[str, dict]:
    return {
        cid: _run(
            Job(
                p,
                mode="emulate",
                device="cpu",
                default_device="meta",
                play_rank=_busiest(p),
                warmup=0,
                iters=1,
            )
        )
        for cid, p in STRICT.items()
    }


def _busiest(p: Problem) -> int:
    """The rank whose bytes the cost model states: LASP-1's chain ends (rank 0, the last) send less."""
    return 1 if p.method == "lasp1" else 0


def _assert_counted_equals_model(p: Problem, result: dict) -> None:
    method = methods.for_problem(p)
    assert result["comm"] == {
        ph: {k: b for k, b in kinds.items() if b} for ph, kinds in method.comm_cost(p).as_dict().items()
    }


@pytest.mark.parametrize("cid", sorted(META))
def test_meta_device_job(cid, meta_results):
    p, kernel = META[cid]
    result = meta_results[cid]
    assert "error" not in result, result.get("error")
    assert result["attn_backend"] == (kernel if kernel != "auto" else result["attn_backend"])
    assert result["step_times_s"] == []  # meta steps run but are not timed
    assert result["linear_backend"] == ("torch_chunked" if p.model.kind in ("linear", "hybrid") else None)
    _assert_counted_equals_model(p, result)
    if kernel == "math":
        return  # memory models describe the fast kernels; the math path is the float64 reference
    model = methods.for_problem(p).memory_cost(replace(p, device="meta"))
    fwd_end, end = result["mem_fwd_end_detail"], result["mem_end_detail"]
    assert (fwd_end["param"], fwd_end["input"], fwd_end["act"], end["grad"]) == (
        model.param,
        model.input,
        model.act,
        model.grad,
    )


@pytest.mark.parametrize("cid", sorted(RANKS))
def test_meta_device_job_on_every_rank(cid, rank_results):
    p, _, _ = RANKS[cid]
    result = rank_results[cid]
    assert "error" not in result, result.get("error")
    if cid.rsplit("-rank", 1)[0] in SYMMETRIC:
        _assert_counted_equals_model(p, result)
    else:  # the model states the busiest rank; no rank moves more
        model = methods.for_problem(p).comm_cost(p).as_dict()
        assert all(b <= model[ph].get(k, 0) for ph, kinds in result["comm"].items() for k, b in kinds.items())


# flash-attn cannot be installed here: its wrappers run on meta against stand-ins with the signatures
# of real releases (tests/test_kernels.py), computing with the math path on meta tensors
FLASH_ATTN = {
    f"{name}-causal{int(causal)}-{kernel}": (VARIANTS[name](causal=causal), kernel, style)
    for name in ("ulysses", "ring-stripe", "allgather_cp-zigzag", "usp-u2r2-ulysses_inner")
    for causal in (True, False)
    for kernel, style in (("flash_attn", "fa2_2.8"), ("flash_attn3", "fa3_2025.08"))
}


@pytest.fixture(scope="module")
def flash_attn_results() -> dict[str, dict]:
    from methods.common import attention

    from .test_kernels import _fa_stand_ins

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention, "_fa", _fa_stand_ins("fa2_2.8"))
        patch.setattr(attention, "_fa3", _fa_stand_ins("fa3_2025.08"))
        return {
            cid: _run(Job(p, mode="emulate", device="meta", attn_backend=kernel, warmup=0, iters=1))
            for cid, (p, kernel, _) in FLASH_ATTN.items()
        }


@pytest.mark.parametrize("cid", sorted(FLASH_ATTN))
def test_flash_attn_wrappers_on_meta(cid, flash_attn_results):
    p, kernel, _ = FLASH_ATTN[cid]
    result = flash_attn_results[cid]
    assert "error" not in result, result.get("error")
    assert result["attn_backend"] == kernel
    _assert_counted_equals_model(p, result)


def test_meta_tier_covers_every_registered_variant():
    covered = {(p.method, p.workload.name, p.model.kind) for p, _ in META.values()}
    covered |= {(p.method, p.workload.name, p.model.kind) for p in STRICT.values()}
    for name, variants in methods.REGISTRY.items():
        for m in variants:
            assert any((name, w, k) in covered for w in m.workloads for k in m.model_kinds), (
                name,
                m.workloads,
                m.model_kinds,
            )


@pytest.mark.parametrize("cid", sorted(STRICT))
def test_cpu_job_with_meta_as_default_device(cid, strict_results):
    result = strict_results[cid]
    assert "error" not in result, result.get("error")
    assert len(result["step_times_s"]) == 1
    _assert_counted_equals_model(STRICT[cid], result)


def test_zero3_on_meta_says_why_it_cannot_run():
    result = _run(Job(ZERO3_VARIANTS["ulysses-zero3"](), mode="emulate", device="meta", warmup=0, iters=1))
    assert "FSDP2 refuses meta parameters" in result["error"] and "nearest check" in result["error"]


def test_the_tier_sees_a_cpu_tensor_meeting_device_data(monkeypatch):
    """The bug this tier exists for (RoPE's frequencies built on the CPU): put it back and the meta
    job fails with torch's device error, while the CPU job is blind to it."""
    import torch

    from methods.common import layers

    def cpu_rope(positions, head_dim, theta, dtype):
        inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim)
        )
        angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
        return angles.cos().to(dtype), angles.sin().to(dtype)

    monkeypatch.setattr(layers, "rope_cos_sin", cpu_rope)
    p = VARIANTS["ulysses"]()
    assert "error" not in _run(Job(p, mode="emulate", device="cpu", warmup=0, iters=1))
    error = _run(Job(p, mode="emulate", device="meta", warmup=0, iters=1))["error"]
    assert "device" in error and "cpu" in error and "meta" in error, error


def test_harness_run_on_meta_writes_rows_and_refuses_what_meta_cannot_bind(tmp_path):
    """Through `python -m harness.run`: ok rows with counted bytes equal to theory and no timing, a
    Llama3-8B-shaped point (head_dim 128, GQA 32/8, 8 ranks) included; invalid rows, before any
    process starts, for device=meta outside emulate and for a kernel the stand-in GPU cannot bind."""
    from harness.results import load

    from .test_harness import harness_run

    sweep = tmp_path / "sweep"
    res = harness_run(
        "-m",
        "mode=emulate",
        "device=meta",
        "method=ulysses,ring",
        "bench.attn_backend=cudnn",
        "model=llama3_8b",
        "model.layers=1",
        "world_size=8",
        "workload.seq_len=8192",
        "dtype=bfloat16",
        "bench.warmup=1",
        "bench.iters=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    df = load(sweep)
    assert len(df) == 2 and (df.status == "ok").all(), df[["method", "error"]]
    assert sorted(zip(df.method, df.attn_backend)) == [("ring", "cudnn"), ("ulysses", "cudnn")]
    assert (df.device_name == "meta").all() and "step_time_ms" not in df  # no timing on meta
    assert (df.comm_bytes_fwd == df.theory_comm_bytes_fwd).all() and (
        df.comm_bytes_bwd == df.theory_comm_bytes_bwd
    ).all()
    bad = tmp_path / "bad"
    res = harness_run(
        "-m",
        "mode=real,emulate",
        "device=meta",
        "bench.attn_backend=flash_attn",
        "dtype=bfloat16",
        f"hydra.sweep.dir={bad}",
        cwd=tmp_path,
    )
    rows = load(bad).sort_values("mode")
    assert list(rows.status) == ["invalid", "invalid"]
    assert "flash-attn kernels need their package installed" in rows.error.iloc[0]
    assert "device=meta needs mode=emulate" in rows.error.iloc[1]
