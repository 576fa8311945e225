"""Attention kernels that return the log-sum-exp next to the output, forward and backward.

Every kernel takes q [B, Lq, H, D], k/v [B, Lk, Hkv, D] (H % Hkv == 0) and returns
out [B, Lq, H, D] (input dtype) and lse [B, H, Lq] (float32, float64 for float64 inputs). The backward
takes the *final* out and lse, which is what lets ring attention compute exact per-block gradients.
`causal` is only used on square blocks (Lq == Lk), where every backend agrees on the mask.

Which kernel runs: the first of PREFERENCE that `available_backends(device, dtype, head_dim)` admits
(CPU: cpu_flash, then math; float64 on CUDA: math only), unless `use_backend(name)` forced one;
`backend_name(device, dtype, head_dim)` says which, for the result row. A GPU kernel is used only once
`check_kernel` passed it at the job's dtype and head size (shapes, LSE within LSE_ATOL nats, the rest
within REL_TOL of the math path). The meta device stands in for a Hopper GPU: the CUDA kernels are
bound there and run their aten ops' meta kernels (the meta-device tier, tests/test_meta_device.py).
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

try:  # optional: flash-attn 2 when installed (CUDA only)
    from flash_attn import flash_attn_interface as _fa
except ImportError:  # pragma: no cover - depends on the machine
    _fa = None
try:  # optional: flash-attn 3, the Hopper build's top-level module
    import flash_attn_interface as _fa3
except ImportError:  # pragma: no cover - depends on the machine
    _fa3 = None

Kernel = tuple[Callable, Callable]  # (forward, backward)


def _bhld(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


def _repeat_kv(k: torch.Tensor, rep: int) -> torch.Tensor:
    return k if rep == 1 else k.repeat_interleave(rep, dim=2)


def _sum_kv(dk: torch.Tensor, rep: int) -> torch.Tensor:
    if rep == 1:
        return dk
    B, L, H, D = dk.shape
    return dk.view(B, L, H // rep, rep, D).sum(3)


# ---- math: the float64 reference path (any device, any dtype) -------------------------------------


def _math_scores(q, k, causal):
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        Lq, Lk = q.shape[1], k.shape[1]
        keep = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    return s


def _math_fwd(q, k, v, causal):
    rep = q.shape[2] // k.shape[2]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(acc), _repeat_kv(k, rep).to(acc), _repeat_kv(v, rep).to(acc)
    s = _math_scores(qf, kf, causal)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.exp(s - lse[..., None]), vf)
    return out.to(q.dtype), lse


def _math_bwd(dout, q, k, v, out, lse, causal):
    rep = q.shape[2] // k.shape[2]
    acc = lse.dtype
    qf, kf, vf = q.to(acc), _repeat_kv(k, rep).to(acc), _repeat_kv(v, rep).to(acc)
    do, of = dout.to(acc), out.to(acc)
    p = torch.exp(_math_scores(qf, kf, causal) - lse[..., None])
    dv = torch.einsum("bhqk,bqhd->bkhd", p, do)
    dp = torch.einsum("bqhd,bkhd->bhqk", do, vf)
    delta = (do * of).sum(-1).transpose(1, 2)  # [B, H, Lq]
    ds = p * (dp - delta[..., None]) * (1.0 / math.sqrt(q.shape[-1]))
    dq = torch.einsum("bhqk,bkhd->bqhd", ds, kf)
    dk = torch.einsum("bhqk,bqhd->bkhd", ds, qf)
    return dq.to(q.dtype), _sum_kv(dk, rep).to(k.dtype), _sum_kv(dv, rep).to(v.dtype)


# ---- PyTorch's CPU flash kernel (all float dtypes, native GQA) ------------------------------------


def _cpu_flash_fwd(q, k, v, causal):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        _bhld(q), _bhld(k), _bhld(v), 0.0, causal
    )
    return _bhld(out), lse


def _cpu_flash_bwd(dout, q, k, v, out, lse, causal):
    grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        _bhld(dout), _bhld(q), _bhld(k), _bhld(v), _bhld(out), lse.contiguous(), 0.0, causal
    )
    return tuple(_bhld(g) for g in grads)


# ---- CUDA SDPA kernels ---------------------------------------------------------------------------
# The aten backward ops take cum_seq_q/cum_seq_k (and cuDNN attn_bias) as plain `Tensor`, but test
# `.defined()` to pick the nested/varlen path or a bias: a dense call passes None, which the op
# binding turns into an undefined tensor (an empty tensor would be "defined" and take the wrong path).
# dout is made contiguous in [B, L, H, D] so that it has the same strides as out, as the kernels want.
# The flash kernel takes fewer kv heads natively (and sums dK/dV over each group itself); the
# efficient and cuDNN kernels get kv heads repeated and their gradients summed back.


def _cuda_flash_fwd(q, k, v, causal):
    res = torch.ops.aten._scaled_dot_product_flash_attention(_bhld(q), _bhld(k), _bhld(v), 0.0, causal)
    return _bhld(res[0]), res[1]


def _cuda_flash_bwd(dout, q, k, v, out, lse, causal):
    seed = torch.empty(0, device=q.device, dtype=torch.int64)  # RNG state: only read when dropout > 0
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
        _bhld(dout.contiguous()),
        _bhld(q),
        _bhld(k),
        _bhld(v),
        _bhld(out.contiguous()),
        lse.contiguous(),
        None,
        None,
        q.shape[1],
        k.shape[1],
        0.0,
        causal,
        seed,
        seed,
    )
    return _bhld(dq), _bhld(dk), _bhld(dv)


_EFFICIENT_LSE_ROWS = 32  # the efficient kernel's LSE rows come in blocks of 32, padded with +inf


def _cuda_efficient_fwd(q, k, v, causal):
    rep = q.shape[2] // k.shape[2]
    out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
        _bhld(q), _bhld(_repeat_kv(k, rep)), _bhld(_repeat_kv(v, rep)), None, True, 0.0, causal
    )
    return _bhld(out), lse[..., : q.shape[1]].contiguous()


def _cuda_efficient_bwd(dout, q, k, v, out, lse, causal):
    rep = q.shape[2] // k.shape[2]
    kr, vr = _repeat_kv(k, rep), _repeat_kv(v, rep)
    # its backward reads whole 32-row LSE blocks without bound checks: give it the padded layout back
    pad = -q.shape[1] % _EFFICIENT_LSE_ROWS
    lse = F.pad(lse, (0, pad), value=math.inf).contiguous()
    seed = torch.zeros((), dtype=torch.int64, device=q.device)
    dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
        _bhld(dout.contiguous()),
        _bhld(q),
        _bhld(kr),
        _bhld(vr),
        None,
        _bhld(out.contiguous()),
        lse,
        seed,
        seed,
        0.0,
        [True, True, True, False],
        causal,
    )
    return _bhld(dq), _sum_kv(_bhld(dk), rep), _sum_kv(_bhld(dv), rep)


# Releases differ in the rank of cuDNN's LSE: some return [B, H, L, 1] and want it back so, others
# return [B, H, L] and unsqueeze inside the backward. The forward records what this torch returned;
# the backward hands the LSE back in that shape.
_cudnn_lse_ndim: int | None = None


def _cudnn_fwd(q, k, v, causal):
    global _cudnn_lse_ndim
    rep = q.shape[2] // k.shape[2]
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(
        _bhld(q), _bhld(_repeat_kv(k, rep)), _bhld(_repeat_kv(v, rep)), None, True, 0.0, causal
    )
    _cudnn_lse_ndim = res[1].dim()
    return _bhld(res[0]), res[1].reshape(q.shape[0], q.shape[2], q.shape[1])


def cudnn_raw_lse(lse: torch.Tensor) -> torch.Tensor:
    """The [B, H, L] LSE in the shape this torch's cuDNN forward returned it (see above)."""
    if _cudnn_lse_ndim is None:
        raise RuntimeError("cuDNN attention backward before any cuDNN forward: the LSE rank is unknown")
    return lse.reshape(*lse.shape, *(1,) * (_cudnn_lse_ndim - lse.dim())).contiguous()


def _cudnn_bwd(dout, q, k, v, out, lse, causal):
    rep = q.shape[2] // k.shape[2]
    kr, vr = _repeat_kv(k, rep), _repeat_kv(v, rep)
    # defined seed/offset even without dropout: some releases convert them to int64 unconditionally
    seed = torch.zeros((), dtype=torch.int64, device=q.device)
    dq, dk, dv = torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
        _bhld(dout.contiguous()),
        _bhld(q),
        _bhld(kr),
        _bhld(vr),
        _bhld(out.contiguous()),
        cudnn_raw_lse(lse),
        seed,
        seed,
        None,
        None,
        None,
        q.shape[1],
        k.shape[1],
        0.0,
        causal,
    )
    return _bhld(dq), _sum_kv(_bhld(dk), rep), _sum_kv(_bhld(dv), rep)


# ---- flash-attn 2 and 3 (optional) ----------------------------------------------------------------


def _params(fn: Callable) -> dict[str, inspect.Parameter]:
    """Parameters of a flash-attn entry point. Recent releases wrap them in torch.library.custom_op,
    whose object only shows (*args, **kwargs); the decorated Python function keeps the real names."""
    return dict(inspect.signature(getattr(fn, "_init_fn", fn)).parameters)


def _fa_kwargs(fn: Callable, **kw) -> dict:
    """flash-attn renamed arguments across releases (window_size vs window_size_left/right, softcap):
    pass only what this release's signature takes."""
    params = _params(fn)
    if "window_size" in params:
        kw["window_size"] = (-1, -1)
    else:
        kw.update(window_size_left=-1, window_size_right=-1)
    kw.update(softcap=0.0, alibi_slopes=None, deterministic=False)
    return {k: v for k, v in kw.items() if k in params}


def _flash_attn_fwd(q, k, v, causal):
    kw = _fa_kwargs(
        _fa._flash_attn_forward,
        dropout_p=0.0,
        softmax_scale=q.shape[-1] ** -0.5,
        causal=causal,
        return_softmax=False,
    )
    res = _fa._flash_attn_forward(q, k, v, **kw)
    # < 2.7 returns (out, q, k, v, out_padded, lse, S_dmask, rng_state), later (out, lse, S_dmask, rng_state)
    return res[0], res[-3]


def _flash_attn_bwd(dout, q, k, v, out, lse, causal):
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    kw = _fa_kwargs(
        _fa._flash_attn_backward,
        dropout_p=0.0,
        softmax_scale=q.shape[-1] ** -0.5,
        causal=causal,
        rng_state=None,
    )
    _fa._flash_attn_backward(dout.contiguous(), q, k, v, out, lse.contiguous(), dq, dk, dv, **kw)
    return dq, dk, dv


def _fa3_call(fn: Callable, causal: bool, **known):
    """flash-attn 3 (2025 interface on) takes many parameters, some required, that change between
    releases: pass each by name, the ones we do not use as None. The causal flag is `is_causal` in the
    backward of releases since mid 2025 and `causal` elsewhere; the window is a pair or two ints."""
    params = _params(fn)
    known.update(
        causal=causal,
        is_causal=causal,
        window_size_left=-1,
        window_size_right=-1,
        window_size=(-1, -1),
        softcap=0.0,
        deterministic=False,
        sm_margin=0,
        num_splits=1,
    )
    return fn(
        **{name: known.get(name) for name, p in params.items() if name in known or p.default is p.empty}
    )


def _flash_attn3_fwd(q, k, v, causal):
    res = _fa3_call(_fa3._flash_attn_forward, causal, q=q, k=k, v=v, softmax_scale=q.shape[-1] ** -0.5)
    return res[0], res[1]  # (out, softmax_lse [B, H, L] float32, split-kv scratch...)


def _flash_attn3_bwd(dout, q, k, v, out, lse, causal):
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _fa3_call(
        _fa3._flash_attn_backward,
        causal,
        dout=dout.contiguous(),
        q=q,
        k=k,
        v=v,
        out=out,
        softmax_lse=lse.contiguous(),
        dq=dq,
        dk=dk,
        dv=dv,
        softmax_scale=q.shape[-1] ** -0.5,
    )
    return dq, dk, dv


KERNELS: dict[str, Kernel] = {
    "math": (_math_fwd, _math_bwd),
    "cpu_flash": (_cpu_flash_fwd, _cpu_flash_bwd),
    "cuda_flash": (_cuda_flash_fwd, _cuda_flash_bwd),
    "cuda_efficient": (_cuda_efficient_fwd, _cuda_efficient_bwd),
    "flash_attn": (_flash_attn_fwd, _flash_attn_bwd),
    "cudnn": (_cudnn_fwd, _cudnn_bwd),
    "flash_attn3": (_flash_attn3_fwd, _flash_attn3_bwd),
}

# best first, on a GPU (the order); CPU has cpu_flash then math
PREFERENCE = ("flash_attn3", "flash_attn", "cudnn", "cuda_flash", "cuda_efficient", "math")
# The meta device stands in for a GPU (the meta-device tier): the CUDA wrappers are bound as on this
# Hopper capability, and their aten ops run on meta kernels (shapes, dtypes, argument lists only).
META_CAPABILITY = (9, 0)
_forced: str | None = None


def use_backend(name: str | None) -> None:
    """Force one kernel for every attention call of this process (`bench.attn_backend`); None or
    "auto" goes back to the automatic choice."""
    global _forced
    if name not in (None, "auto") and name not in KERNELS:
        raise ValueError(
            f"unknown attention backend {name!r}; choose auto or one of {', '.join(sorted(KERNELS))}"
        )
    _forced = None if name in (None, "auto") else name


def is_gpu_like(device: torch.device) -> bool:
    """CUDA, or the meta device standing in for it."""
    return device.type in ("cuda", "meta")


def _candidates(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Kernels whose requirements this device and dtype meet (packages, architecture, dtype)."""
    if not is_gpu_like(device):
        return ["cpu_flash", "math"]
    if dtype == torch.float64:
        return ["math"]
    half = dtype in (torch.float16, torch.bfloat16)
    meta = device.type == "meta"
    major = META_CAPABILITY[0] if meta else torch.cuda.get_device_capability(device)[0]
    ok = {
        "flash_attn3": _fa3 is not None and half and major == 9,
        "flash_attn": _fa is not None and half and major >= 8,
        "cudnn": half and major >= 8 and (meta or torch.backends.cudnn.is_available()),
        "cuda_flash": half and major >= 8,
        "cuda_efficient": True,
        "math": True,
    }
    return [name for name in PREFERENCE if ok[name]]


# Self-check tolerances: |LSE - math| in nats, and max |a - b| / max |b| for out, dq, dk, dv. Loose
# enough for a correct half-precision kernel, tight enough that a wrong causal alignment, a dropped
# scale or a permuted LSE (each an O(1) change of some rows) is refused.
LSE_ATOL = 1e-2
REL_TOL = {torch.bfloat16: 5e-2, torch.float16: 2e-2, torch.float32: 1e-3, torch.float64: 1e-10}
_CHECK_LENGTH = 129  # odd: not a multiple of any kernel's block, as stripe's L-1 blocks are not


def _layout_differs(got: dict, ref: dict, dtype: torch.dtype, mask: str) -> str | None:
    """Why the kernel's results so far do not have the math path's shapes and dtypes, or None."""
    for name, g in got.items():
        r, want = ref[name], acc_dtype(dtype) if name == "lse" else dtype
        if tuple(g.shape) != tuple(r.shape) or g.dtype != want:
            return f"{mask} {name} is {tuple(g.shape)} {g.dtype}, expected {tuple(r.shape)} {want}"
    return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op off CUDA), so their errors surface here."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def check_kernel(kernel: Kernel, device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why `kernel` must not be used for `dtype` attention at `head_dim` on `device`, or None when it
    agrees with the math path on a GQA block (4 query heads over 2 kv heads) of an odd length, causal
    and not: same shapes and dtypes of out, LSE, dq, dk, dv, and (on a device that computes) LSE
    within LSE_ATOL nats and the rest within REL_TOL. CUDA errors are asynchronous, so the device is
    synchronised before the results are read; any error is a reason, never an exception."""
    tol = REL_TOL[dtype]
    for causal in (True, False):
        gen = torch.Generator(device="cpu").manual_seed(0)
        q = torch.randn(1, _CHECK_LENGTH, 4, head_dim, generator=gen).to(device=device, dtype=dtype)
        k, v, dout = (
            torch.randn(1, _CHECK_LENGTH, h, head_dim, generator=gen).to(device=device, dtype=dtype)
            for h in (2, 2, 4)
        )
        mask = "causal" if causal else "full"
        ref_out, ref_lse = _math_fwd(q, k, v, causal)
        ref_grads = _math_bwd(dout, q, k, v, ref_out, ref_lse, causal)
        ref = {"out": ref_out, "lse": ref_lse, "dq": ref_grads[0], "dk": ref_grads[1], "dv": ref_grads[2]}
        got: dict[str, torch.Tensor] = {}
        try:
            got["out"], got["lse"] = kernel[0](q, k, v, causal)
            reason = _layout_differs(got, ref, dtype, mask)  # before a backward that would misread it
            if reason is None:
                got["dq"], got["dk"], got["dv"] = kernel[1](dout, q, k, v, got["out"], got["lse"], causal)
                synchronize(device)
                reason = _layout_differs(got, ref, dtype, mask)
        except Exception as err:  # noqa: BLE001 - any failure means "not usable here"
            return f"{mask}: {type(err).__name__}: {str(err).strip()[:300]}"
        if reason is not None:
            return reason
        lse = got["lse"]
        if device.type == "meta":
            continue  # no values to compare
        lse_err = float((lse.double() - ref_lse.double()).abs().max())
        if not lse_err <= LSE_ATOL:
            return f"{mask} LSE differs from the math path by {lse_err:.3g} nats (tolerance {LSE_ATOL})"
        for name in ("out", "dq", "dk", "dv"):
            rel = _max_rel(got[name], ref[name])
            if not rel <= tol:
                return f"{mask} {name} differs from the math path by {rel:.3g} relative (tolerance {tol})"
    return None


@functools.cache
def _passes_self_check(name: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Once per process, device, dtype and head_dim: `check_kernel` against the math path, so a kernel
    that a driver or release cannot run (or runs wrongly) is skipped rather than failing a job or
    passing wrong numbers. A skip warns with the reason, since the row only shows the kernel used."""
    reason = check_kernel(KERNELS[name], device, dtype, head_dim)
    if reason is not None:
        warnings.warn(
            f"attention backend {name!r} skipped on {device} {dtype} head_dim={head_dim}: {reason}",
            stacklevel=2,
        )
    return reason is None


def _usable(name: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """A candidate runs here: CPU kernels and math always, GPU kernels once self-checked."""
    return not is_gpu_like(device) or name == "math" or _passes_self_check(name, device, dtype, head_dim)


def available_backends(device: torch.device, dtype: torch.dtype, head_dim: int = 64) -> list[str]:
    """Kernels that run here, best first: package installed, device, compute capability and dtype
    allow it, and (GPU kernels) a one-time self-check against the math path passed."""
    return [n for n in _candidates(device, dtype) if _usable(n, device, dtype, head_dim)]


def candidate_backends(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Kernels that this device and dtype allow, before any self-check (what may be forced)."""
    return _candidates(device, dtype)


def backend_name(device: torch.device, dtype: torch.dtype, head_dim: int = 64) -> str:
    """The kernel attention uses for tensors on `device` in `dtype` at `head_dim`: the forced one
    (ValueError when it cannot run here or fails its self-check) or the best available."""
    if _forced is not None:
        if _forced not in _candidates(device, dtype):
            raise ValueError(
                f"attention backend {_forced!r} cannot run {dtype} on {device.type}; "
                f"usable here: {', '.join(available_backends(device, dtype, head_dim))}"
            )
        if not _usable(_forced, device, dtype, head_dim):
            raise ValueError(
                f"attention backend {_forced!r} failed its self-check on {device} {dtype} "
                f"head_dim={head_dim} (the warning says why)"
            )
        return _forced
    return next(
        n for n in _candidates(device, dtype) if _usable(n, device, dtype, head_dim)
    )  # math qualifies


def choose_backend(q: torch.Tensor) -> str:
    """The kernel for this query tensor (see backend_name)."""
    return backend_name(q.device, q.dtype, q.shape[-1])


def attn_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of softmax attention; see the module docstring for shapes."""
    return KERNELS[choose_backend(q)][0](q, k, v, causal)


def attn_backward(dout, q, k, v, out, lse, causal) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) given the final out and lse of the rows of q."""
    return KERNELS[choose_backend(q)][1](dout, q, k, v, out, lse, causal)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype for partial outputs, LSEs and gradient sums: float32, or float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def merge_lse(
    out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over two disjoint key sets: (out [B, L, H, D], lse [B, H, L]) so far and a
    new block's. The sigmoid form never exponentiates a large LSE difference."""
    block_lse = block_lse.to(lse.dtype)
    new_lse = lse - F.logsigmoid(lse - block_lse)
    weight = torch.sigmoid(block_lse - lse).transpose(1, 2).unsqueeze(-1)  # [B, L, H, 1]
    return out - weight * (out - block_out.to(out.dtype)), new_lse


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal):
        out, lse = attn_forward(q, k, v, causal)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal = causal
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        return (*attn_backward(dout, q, k, v, out, lse, ctx.causal), None)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Differentiable local attention through the chosen kernel."""
    return _Attention.apply(q, k, v, causal)
