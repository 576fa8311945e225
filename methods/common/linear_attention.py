"""Basic linear attention (identity feature map, no normalisation, no 1/sqrt(d) scale, as LASP-2),
optionally with a per-head decay lambda (RetNet's table by default, see DECAY_RULES):

    causal:         o_i = sum_{j <= i} lambda^(i-j) (q_i . k_j) v_j
    bidirectional:  o_i = sum_j (q_i . k_j) v_j        (decay is not defined here)

`naive_linear_attention` is the quadratic reference; `LinearKernel` is the chunked op (intra-chunk
masked products plus queries times the decayed prefix of the chunk states, every chunk in one batched
product, so the op count does not grow with L) that layers and parallel methods run locally.
Shapes as the softmax kernels: q [B, L, H, D], k/v [B, L, Hkv, D], GQA by repeating kv heads.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from .attention import acc_dtype
from .config import ModelConfig

# The per-head decay tables a linear model's `decay_rule` names, lambda_h for heads h = 0 .. H-1:
#   retnet  1 - 2^(-5 - h): RetNet (Sun et al., arXiv 2307.08621, Sec. 2.2:
#           gamma = 1 - 2^(-5 - arange(0, h))), as torchscale's MultiScaleRetention and
#           flash-linear-attention's retention layer build it
#   scaled  1 - 2^(-5 - 8h/H): spbench's earlier table, the same range [1 - 2^-5, 1 - 2^-13) whatever H;
#           equal to retnet at H = 8 only (at H = 16 head 15 keeps 1 - 2^-12.5 instead of 1 - 2^-20)
DECAY_RULES = ("retnet", "scaled")
DEFAULT_DECAY_RULE = "retnet"


def head_decays(heads: int, rule: str = DEFAULT_DECAY_RULE) -> torch.Tensor:
    """The per-head decays lambda_h in (0, 1) of `rule` (see DECAY_RULES), float64 on the CPU (layers
    hold them as a buffer, moved with the model)."""
    h = torch.arange(heads, dtype=torch.float64, device="cpu")
    if rule == "retnet":
        return 1 - 2.0 ** (-5 - h)
    if rule == "scaled":
        return 1 - 2.0 ** (-5 - 8 * h / heads)
    raise ValueError(f"unknown decay rule {rule!r}; one of {', '.join(DECAY_RULES)}")


def model_decays(cfg: ModelConfig) -> torch.Tensor | None:
    """The decays of a linear model's layers: None unless the model sets `decay: true`; the table is
    the model's `decay_rule` (default retnet)."""
    if not cfg.extra.get("decay"):
        return None
    return head_decays(cfg.heads, cfg.extra.get("decay_rule", DEFAULT_DECAY_RULE))


def _repeat_kv(q, k, v):
    rep = q.shape[2] // k.shape[2]
    return k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)


def decay_matrix(
    decay: torch.Tensor | None, lq: int, lk: int, offset: int, causal: bool, device, dtype
) -> torch.Tensor:
    """[H or 1, lq, lk] weights of query i (at position offset + i) on key j: lambda^(pos_i - j) for
    pos_i >= j, else 0 (causal); all ones when bidirectional. Non-negative exponents only."""
    if not causal:
        return torch.ones(1, lq, lk, device=device, dtype=dtype)
    gap = (torch.arange(lq, device=device)[:, None] + offset) - torch.arange(lk, device=device)[None, :]
    keep = gap >= 0
    if decay is None:
        return keep.to(dtype)[None]
    log = torch.log(decay.to(device=device, dtype=torch.float64))[:, None, None]
    return (torch.exp(log * gap.clamp_min(0)) * keep).to(dtype)


def naive_linear_attention(q, k, v, causal: bool, decay: torch.Tensor | None = None) -> torch.Tensor:
    k, v = _repeat_kv(q, k, v)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * decay_matrix(
        decay, q.shape[1], k.shape[1], 0, causal, q.device, q.dtype
    )
    return torch.einsum("bhqk,bkhd->bqhd", scores, v)


class LinearKernel:
    """The layer's fast single-device kernel; parallel methods recognise it to route linear layers
    (and slice the decay to the heads a rank holds)."""

    def __init__(self, decay: torch.Tensor | None, chunk: int = 64):
        self.decay, self.chunk = decay, chunk

    def for_heads(self, start: int, count: int) -> LinearKernel:
        return self if self.decay is None else LinearKernel(self.decay[start : start + count], self.chunk)

    def __call__(self, q, k, v, causal: bool) -> torch.Tensor:
        """Chunked, all chunks at once (a fixed number of ops whatever L; logarithmic in L with a
        decay): the intra-chunk weighted products of every chunk in one batched product, the chunk
        states M_m = (b * K_m)^T V_m in another, their decayed exclusive prefix S_n = sum_{m<n}
        lambda^(c(n-1-m)) M_m, and the queries times their chunk's S_n. States, their prefix and the
        inter-chunk term are in the accumulation dtype; the intra-chunk term and the output in q's.
        On CUDA, flash-linear-attention's chunk kernel runs instead where it is installed and passed
        its self-check (`linear_backend_name`)."""
        if not causal:
            return naive_linear_attention(q, k, v, False)
        if _fla_usable(q):
            return self._fla(q, k, v)
        return self._chunked(q, k, v)

    def _chunked(self, q, k, v) -> torch.Tensor:
        """The torch path of the causal kernel (every device; "torch_chunked")."""
        B, L, H = q.shape[:3]
        c, acc, dev = min(self.chunk, L), acc_dtype(q.dtype), q.device  # a short sequence is one chunk
        n = -(-L // c)  # chunks; the last one is zero-padded to c tokens
        qh, kh, vh = (_head_major(x, H, n * c) for x in (q, k, v))  # [B, H, n*c, D]
        qh, kh, vh = (x.view(B, H, n, c, x.shape[-1]) for x in (qh, kh, vh))
        # padded keys/values are zero (they add nothing), padded query rows are dropped below
        w = decay_matrix(self.decay, c, c, 0, True, dev, q.dtype)[:, None]  # [H or 1, 1, c, c]
        scores = torch.einsum("bhnqd,bhnkd->bhnqk", qh, kh) * w
        out = torch.einsum("bhnqk,bhnke->bhnqe", scores, vh)
        if n > 1:  # queries of chunk n read S_n; chunk 0 reads nothing (S_0 = 0)
            qa, kb = qh.to(acc), kh.to(acc)
            if self.decay is not None:  # a_r = lambda^(r+1) on queries, b_u = lambda^(c-1-u) on keys
                a, b = _row_weights(self.decay, c, dev, acc)
                qa, kb = qa * a, kb * b
            # every chunk's state in one product (the last one's is never read: dropped)
            states = torch.einsum("bhnkd,bhnke->bhnde", kb, vh.to(acc))[:, :, :-1]
            prefix = self._prefix(states, c, dev)  # [B, H, n-1, D, E]: S_1 .. S_{n-1}
            prefix = F.pad(prefix, (0, 0, 0, 0, 1, 0))  # S_0 = 0, so every chunk's queries go in one product
            out = out + torch.einsum("bhnqd,bhnde->bhnqe", qa, prefix).to(q.dtype)
        return out.view(B, H, n * c, -1)[:, :, :L].transpose(1, 2).contiguous()

    def _prefix(self, states: torch.Tensor, c: int, device) -> torch.Tensor:
        """Inclusive decayed scan over the chunk axis (dim 2) of the states M_0 .. M_{n-2}: entry j is
        sum_{m<=j} lambda^(c(j-m)) M_m = S_{j+1}.

        Without a decay this is a cumsum. With one, a log-step doubling scan (Hillis-Steele): after the
        step of shift s every entry holds the decayed sum of its last 2s inputs, so ceil(log2(n-1))
        steps of T[j] += lambda^(cs) T[j-s]. Chosen over (1) a cumsum of lambda^(-cm)-scaled states,
        which overflows (lambda^(-cm) passes float32's range after a few thousand tokens at lambda =
        0.97), and (2) a product with the [H, n, n] lower-triangular chunk-decay matrix, whose
        O(n^2 D^2) flops and H n^2 memory grow quadratically in L (Ulysses hands every rank the whole
        sequence). The scan costs O(n log n D^2), adds a handful of ops per doubling, and only ever
        multiplies by lambda^(cs) <= 1 computed as exp of a non-positive number, so nothing overflows
        in float32 or bfloat16 runs; its autograd keeps only the per-step factors."""
        if self.decay is None:
            return states.cumsum(2)
        rows = states.shape[2]
        steps = max(rows - 1, 0).bit_length()  # shifts 1, 2, 4, ... below `rows`
        if steps == 0:
            return states
        log = torch.log(self.decay.to(device=device, dtype=torch.float64))
        shifts = 2.0 ** torch.arange(steps, device=device, dtype=torch.float64)
        factors = torch.exp((c * shifts)[:, None] * log[None, :]).to(states.dtype)  # lambda^(cs) [steps, H]
        factors = factors.view(steps, 1, -1, 1, 1, 1)
        for i in range(steps):
            s = 1 << i
            states = torch.cat(
                (states[:, :, :s], torch.addcmul(states[:, :, s:], states[:, :, :-s], factors[i])), dim=2
            )
        return states

    def _fla(self, q, k, v) -> torch.Tensor:
        """flash-linear-attention's chunk kernel ("fla_chunk"): simple GLA with the per-head log decay
        as its data-independent gate, no 1/sqrt(d) scale, no initial state; kv heads repeated."""
        k, v = _repeat_kv(q, k, v)
        gamma = (
            None
            if self.decay is None
            else torch.log(self.decay.to(device=q.device, dtype=torch.float64)).float()
        )
        out, _ = _fla_kernel()(
            q, k, v, g_gamma=gamma, scale=1.0, initial_state=None, output_final_state=False
        )
        return out.to(q.dtype)


# ---- optional GPU backend: flash-linear-attention (PyPI fla-core, Triton) -------------------------
# Chosen for causal layers on CUDA in float32 / bfloat16 / float16 when `fla` imports, after a
# self-check against the torch path once per (device, dtype, head_dim); a kernel that raises or
# disagrees is refused with a warning and the torch path runs instead.

FLA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# max |fla - torch| / max |torch| allowed by the self-check, output and q/k/v gradients (fla's
# float32 products may run in TF32)
FLA_TOLERANCE = {torch.float32: 5e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}
_fla_verdicts: dict[tuple[str, torch.dtype, int], bool] = {}


@functools.cache
def _fla_kernel():
    """fla's `chunk_simple_gla`, or None where flash-linear-attention is not installed (or fails to
    import). Looked up once per process."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception:  # noqa: BLE001 - ImportError, or Triton / driver trouble at import
        return None
    return chunk_simple_gla


def _device_key(device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def _fla_candidate(device, dtype: torch.dtype) -> bool:
    return torch.device(device).type == "cuda" and dtype in FLA_DTYPES and _fla_kernel() is not None


def _fla_verdict(device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether fla passed its self-check for this (device, dtype, head_dim); run once, then cached."""
    key = (_device_key(device), dtype, head_dim)
    if key not in _fla_verdicts:
        _fla_verdicts[key] = _fla_self_check(torch.device(key[0]), dtype, head_dim)
    return _fla_verdicts[key]


def _fla_usable(q: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    if not _fla_candidate(q.device, q.dtype) or is_fake(q):  # dryruns keep the modelled torch path
        return False
    return _fla_verdict(q.device, q.dtype, q.shape[-1])


def _fla_self_check(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """fla against the torch path on a small GQA problem with a ragged last chunk, with and without a
    decay: output and q/k/v gradients within FLA_TOLERANCE. False (with a warning) if not, or if
    it raises."""
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.inference_mode(False), torch.enable_grad():  # it may first run inside a no-grad forward
            for decay in (None, head_decays(4)):
                kernel = LinearKernel(decay)
                x = [
                    torch.randn(1, 150, h, head_dim, generator=gen, dtype=torch.float32).to(
                        device=device, dtype=dtype
                    )
                    for h in (4, 2, 2)
                ]
                dout = torch.randn(1, 150, 4, head_dim, generator=gen, dtype=torch.float32).to(
                    device=device, dtype=dtype
                )
                results = []
                for run in (kernel._chunked, kernel._fla):
                    inputs = [t.detach().requires_grad_() for t in x]
                    out = run(*inputs)
                    results.append([out.detach(), *torch.autograd.grad(out, inputs, dout)])
                for name, want, got in zip(("out", "dq", "dk", "dv"), *results):
                    err = float((got.float() - want.float()).abs().max()) / max(
                        float(want.float().abs().max()), 1e-30
                    )
                    if not err <= FLA_TOLERANCE[dtype]:  # also refuses NaN
                        raise ValueError(f"{name} off by {err:.2e} of its max (decay={decay is not None})")
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use it
        warnings.warn(
            f"fla chunk kernel refused on {device} {dtype} head_dim={head_dim}: {exc}; "
            "using the torch chunked kernel",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def linear_backend_name(device, dtype: torch.dtype, head_dim: int | None = None) -> str:
    """The causal linear kernel's backend on `device` in `dtype`: "fla_chunk" where fla is installed,
    the device is CUDA, the dtype one of FLA_DTYPES and its self-check passed (run now for
    `head_dim` when given; without it, no check on this device and dtype has failed), else
    "torch_chunked"."""
    if not _fla_candidate(device, dtype):
        return "torch_chunked"
    if head_dim is not None:
        ok = _fla_verdict(device, dtype, head_dim)
    else:
        key = _device_key(device)
        ok = all(v for (d, t, _), v in _fla_verdicts.items() if d == key and t == dtype)
    return "fla_chunk" if ok else "torch_chunked"


def _head_major(x: torch.Tensor, heads: int, length: int) -> torch.Tensor:
    """x [B, L, Hkv, D] as a contiguous [B, heads, length, D] (kv heads repeated to `heads`, GQA;
    rows past L zero)."""
    rep, pad = heads // x.shape[2], length - x.shape[1]
    x = x.transpose(1, 2)
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    if rep > 1:  # a fresh [B, heads, length, D] (an expanded copy)
        return x.repeat_interleave(rep, dim=1).contiguous()
    # always a copy of its own (even where x is already laid out so, e.g. one head), so that what
    # the kernel saves never keeps the caller's storage alive
    return x.contiguous() if pad else x.clone(memory_format=torch.contiguous_format)


def _row_weights(decay: torch.Tensor, c: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """chunk_weights' a_r = lambda^(r+1) and b_u = lambda^(c-1-u) as [1, H, 1, c, 1] in `dtype`."""
    log = torch.log(decay.to(device=device, dtype=torch.float64))[:, None]
    r = torch.arange(c, device=device, dtype=torch.float64)[None, :]
    a, b = torch.exp((r + 1) * log), torch.exp((c - 1 - r) * log)
    return a.to(dtype)[None, :, None, :, None], b.to(dtype)[None, :, None, :, None]


def chunk_weights(decay: torch.Tensor, c: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a chunk of c tokens: a_r = lambda^(r+1) (queries reading the incoming state), b_u =
    lambda^(c-1-u) (keys writing the outgoing state), lambda^c (the state crossing the chunk)."""
    log = torch.log(decay.to(device=device, dtype=torch.float64))
    r = torch.arange(c, device=device, dtype=torch.float64)[:, None]
    a = torch.exp((r + 1) * log)[None, :, :, None]
    b = torch.exp((c - 1 - r) * log)[None, :, :, None]
    return a, b, torch.exp(c * log)[None, :, None, None]
