"""Basic linear attention (identity feature map, no normalisation, no 1/sqrt(d) scale, as LASP-2),
optionally with a per-head decay lambda (Lightning / Retention style):

    causal:         o_i = sum_{j <= i} lambda^(i-j) (q_i . k_j) v_j
    bidirectional:  o_i = sum_j (q_i . k_j) v_j        (decay is not defined here)

`naive_linear_attention` is the quadratic reference; `LinearKernel` is the chunked op (intra-chunk
masked product plus queries times the running state) that layers and parallel methods run locally.
Shapes as the softmax kernels: q [B, L, H, D], k/v [B, L, Hkv, D], GQA by repeating kv heads.
"""
from __future__ import annotations


import torch

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

    def for_heads(self, start: int, count: int) -> "LinearKernel":
        return self if self.decay is None else LinearKernel(self.decay[start:start + count], self.chunk)

    def __call__(self, q, k, v, causal: bool) -> torch.Tensor:
        """Chunked: for each chunk, intra-chunk weighted product plus (decayed) queries times the state
        of all earlier chunks; the state is carried in the accumulation dtype."""
        if not causal:
            return naive_linear_attention(q, k, v, False)
        k, v = _repeat_kv(q, k, v)
        B, L, H, D = q.shape
        acc = acc_dtype(q.dtype)
        state = torch.zeros(B, H, D, v.shape[-1], device=q.device, dtype=acc)
        outs = []
        for start in range(0, L, self.chunk):
            qc, kc, vc = q[:, start:start + self.chunk], k[:, start:start + self.chunk], v[:, start:start + self.chunk]
            c = qc.shape[1]
            w = decay_matrix(self.decay, c, c, 0, True, q.device, q.dtype)
            intra = torch.einsum("bhqk,bkhd->bqhd", torch.einsum("bqhd,bkhd->bhqk", qc, kc) * w, vc)
            a, b, block = self._weights(c, q.device, acc)  # a_r = l^(r+1), b_u = l^(c-1-u), block = l^c
            inter = torch.einsum("bqhd,bhde->bqhe", (qc.to(acc) * a), state)
            outs.append(intra + inter.to(q.dtype))
            state = state * block + torch.einsum("bkhd,bkhe->bhde", kc.to(acc) * b, vc.to(acc))
        return torch.cat(outs, dim=1)

    def _weights(self, c: int, device, dtype) -> tuple:
        if self.decay is None:
            return 1.0, 1.0, 1.0
        return tuple(t.to(dtype) for t in chunk_weights(self.decay, c, device))


def chunk_weights(decay: torch.Tensor, c: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a chunk of c tokens: a_r = lambda^(r+1) (queries reading the incoming state), b_u =
    lambda^(c-1-u) (keys writing the outgoing state), lambda^c (the state crossing the chunk)."""
    log = torch.log(decay.to(device=device, dtype=torch.float64))
    r = torch.arange(c, device=device, dtype=torch.float64)[:, None]
    a = torch.exp((r + 1) * log)[None, :, :, None]
    b = torch.exp((c - 1 - r) * log)[None, :, :, None]
    return a, b, torch.exp(c * log)[None, :, None, None]
