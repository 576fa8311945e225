"""Basic linear attention (identity feature map, no normalisation, no 1/sqrt(d) scale, as LASP-2),
optionally with a per-head decay lambda (Lightning / Retention style):

    causal:         o_i = sum_{j <= i} lambda^(i-j) (q_i . k_j) v_j
    bidirectional:  o_i = sum_j (q_i . k_j) v_j        (decay is not defined here)

`naive_linear_attention` is the quadratic reference; `LinearKernel` is the chunked op (intra-chunk
masked products plus queries times the decayed prefix of the chunk states, every chunk in one batched
product, so the op count does not grow with L) that layers and parallel methods run locally.
Shapes as the softmax kernels: q [B, L, H, D], k/v [B, L, Hkv, D], GQA by repeating kv heads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import acc_dtype


def head_decays(heads: int) -> torch.Tensor:
    """Retention's per-head decay 1 - 2^(-5 - 8h/H), in (0, 1)."""
    return 1 - 2.0 ** (-5 - 8 * torch.arange(heads, dtype=torch.float64) / heads)


def _repeat_kv(q, k, v):
    rep = q.shape[2] // k.shape[2]
    return k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)


def decay_matrix(decay: torch.Tensor | None, lq: int, lk: int, offset: int, causal: bool, device, dtype) -> torch.Tensor:
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
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * decay_matrix(decay, q.shape[1], k.shape[1], 0, causal,
                                                                  q.device, q.dtype)
    return torch.einsum("bhqk,bkhd->bqhd", scores, v)


class LinearKernel:
    """The layer's fast single-device kernel; parallel methods recognise it to route linear layers
    (and slice the decay to the heads a rank holds)."""

    def __init__(self, decay: torch.Tensor | None, chunk: int = 64):
        self.decay, self.chunk = decay, chunk

    def for_heads(self, start: int, count: int) -> LinearKernel:
        return self if self.decay is None else LinearKernel(self.decay[start:start + count], self.chunk)

    def __call__(self, q, k, v, causal: bool) -> torch.Tensor:
        """Chunked, all chunks at once (a fixed number of ops whatever L; logarithmic in L with a
        decay): the intra-chunk weighted products of every chunk in one batched product, the chunk
        states M_m = (b * K_m)^T V_m in another, their decayed exclusive prefix S_n = sum_{m<n}
        lambda^(c(n-1-m)) M_m, and the queries times their chunk's S_n. States, their prefix and the
        inter-chunk term are in the accumulation dtype; the intra-chunk term and the output in q's."""
        if not causal:
            return naive_linear_attention(q, k, v, False)
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
            prefix = self._prefix(states, dev)  # [B, H, n-1, D, E]: S_1 .. S_{n-1}
            prefix = F.pad(prefix, (0, 0, 0, 0, 1, 0))  # S_0 = 0, so every chunk's queries go in one product
            out = out + torch.einsum("bhnqd,bhnde->bhnqe", qa, prefix).to(q.dtype)
        return out.view(B, H, n * c, -1)[:, :, :L].transpose(1, 2).contiguous()

    def _prefix(self, states: torch.Tensor, device) -> torch.Tensor:
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
        factors = torch.exp((self.chunk * shifts)[:, None] * log[None, :]).to(states.dtype)  # lambda^(cs) [steps, H]
        factors = factors.view(steps, 1, -1, 1, 1, 1)
        for i in range(steps):
            s = 1 << i
            states = torch.cat((states[:, :, :s], torch.addcmul(states[:, :, s:], states[:, :, :-s], factors[i])), dim=2)
        return states


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
    return tuple(t.to(dtype)[None, :, None, :, None] for t in (a, b))


def chunk_weights(decay: torch.Tensor, c: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a chunk of c tokens: a_r = lambda^(r+1) (queries reading the incoming state), b_u =
    lambda^(c-1-u) (keys writing the outgoing state), lambda^c (the state crossing the chunk)."""
    log = torch.log(decay.to(device=device, dtype=torch.float64))
    r = torch.arange(c, device=device, dtype=torch.float64)[:, None]
    a = torch.exp((r + 1) * log)[None, :, :, None]
    b = torch.exp((c - 1 - r) * log)[None, :, :, None]
    return a, b, torch.exp(c * log)[None, :, None, None]
