"""The compute work of one rank's training step, by kernel class (harness/calibration.py), for the
busiest rank of a configuration: GEMM FLOPs of the projections and MLP on the rank's tokens, the
attention FLOPs of the blocks each method really computes (ring steps from the ring's own block plan,
all-gather CP pieces from its own query pieces, causal squares counted half and kept by length), and
elementwise bytes: activations and the weight traffic of gradient sums and FSDP2 units. Backward work
is twice the forward (the convention of harness/flops.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from methods.common.config import Problem
from methods.common.layers import is_softmax_layer
from methods.common.options import zero3
from methods.ring.attention import block_plan
from methods.usp import degrees

BACKWARD = 2  # backward work per unit of forward work
# Elementwise traffic per token and layer, forward: ~20 hidden-sized reads/writes (two RMSNorms, RoPE,
# two residual adds, casts) and ~6 ffn-sized ones (SiLU and the gate product); kernel calls likewise.
HIDDEN_PASSES, FFN_PASSES = 20, 6
ELEMENTWISE_CALLS, GEMM_CALLS = 30, 7
LINEAR_CHUNK = 64  # the chunk of the linear-attention kernel (methods/common/linear_attention.py)
# Weight traffic per step, in passes over the weights' bytes: replicated weights have their
# gradients flattened into one buffer for the SUM all-reduce and copied back (collectives.sum_grads:
# a read and a write each); FSDP2 (ZeRO-3) units copy the gathered weights out in forward and again
# in backward, and copy the gradients into the reduce-scatter's buffer (a read and a write each).
SUM_GRAD_PASSES, ZERO3_PASSES = 4, 6


@dataclass
class Work:
    """Per-rank work of one step: `work`/`calls` per kernel class; `ring_steps` the attention FLOPs
    of each ring step of one layer's forward (for the ring's overlap bound)."""

    work: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("gemm", "attention", "elementwise"), 0.0)
    )
    calls: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("gemm", "attention", "elementwise"), 0.0)
    )
    ring_steps: list[float] = field(default_factory=list)
    # the part of work["attention"] done in square causal blocks, by block length (what such a block
    # really costs depends on the kernel's tiles: calibration.Profile.causal_cost)
    causal_work: dict[int, float] = field(default_factory=dict)
    linear_attention_flops: float = 0.0  # the intra-chunk work LASP-2 overlaps with its state gather


def _length(s: slice, n: int) -> int:
    return len(range(*s.indices(n)))


def _block_flops(batch: int, rows: int, cols: int, heads: int, head_dim: int, square_causal: bool) -> float:
    return 4.0 * batch * rows * cols * heads * head_dim * (0.5 if square_causal else 1.0)


def ring_step_flops(p: Problem, ring: int, heads: int) -> list[list[tuple[float, int]]]:
    """[rank][step] (forward attention FLOPs, the block's length when it is a square causal block
    else 0) of one layer of a ring over `ring` ranks."""
    w, m = p.workload, p.model
    length = w.seq_len // ring
    layout = p.options.layout
    out = []
    for rank in range(ring):
        steps = []
        for step in range(ring):
            plan = block_plan(layout, w.causal, rank, (rank - step) % ring, length)
            if plan is None:
                steps.append((0.0, 0))
                continue
            rows, cols, square = plan
            n_rows = _length(rows, length)
            flops = _block_flops(w.batch_size, n_rows, _length(cols, length), heads, m.head_dim, square)
            steps.append((flops, n_rows if square else 0))
        out.append(steps)
    return out


def allgather_flops(p: Problem, layout: str) -> tuple[float, int, dict[int, float]]:
    """(forward FLOPs, kernel calls, FLOPs of square causal blocks by length) of the busiest rank's
    attention in one all-gather CP layer."""
    w, m, n = p.workload, p.model, p.world_size
    chunks = 2 if layout == "zigzag" else 1
    run = w.seq_len // (chunks * n)
    best: tuple[float, int, dict[int, float]] = (0.0, 0, {})
    for rank in range(n):
        starts = [rank * run] if chunks == 1 else [rank * run, (2 * n - 1 - rank) * run]
        if not w.causal:
            pieces = [(w.seq_len, False)]
        else:
            pieces = [(s, False) for s in starts if s] + [(run, True) for _ in starts]
        rows = w.seq_len // n if not w.causal else run
        flops = [_block_flops(w.batch_size, rows, cols, m.heads, m.head_dim, sq) for cols, sq in pieces]
        causal: dict[int, float] = {}
        for f, (cols, square) in zip(flops, pieces):
            if square:
                causal[cols] = causal.get(cols, 0.0) + f
        if (sum(flops), len(pieces)) > best[:2]:
            best = (sum(flops), len(pieces), causal)
    return best


def _softmax_layer(p: Problem, work: Work) -> tuple[float, int, dict[int, float]]:
    """(forward FLOPs, calls, FLOPs of square causal blocks by length) of one softmax attention layer
    on the busiest rank."""
    w, m, n = p.workload, p.model, p.world_size
    if p.method == "ring" or p.method == "usp":
        ud, rd = degrees(p) if p.method == "usp" else (1, n)
        per_rank = ring_step_flops(p, rd, m.heads // ud)
        busiest = max(per_rank, key=lambda steps: sum(f for f, _ in steps))
        work.ring_steps = [f for f, _ in busiest]
        causal: dict[int, float] = {}
        for f, length in busiest:
            if length:
                causal[length] = causal.get(length, 0.0) + f
        return sum(work.ring_steps), sum(1 for f in work.ring_steps if f), causal
    if p.method in ("allgather_cp", "lasp2"):  # LASP-2H's softmax layers: all-gather CP, contiguous
        return allgather_flops(p, p.options.layout if p.method == "allgather_cp" else "contiguous")
    # whole sequence, a head group per rank (Ulysses, TP-SP, Odysseus)
    flops = _block_flops(w.batch_size, w.seq_len, w.seq_len, m.heads // n, m.head_dim, w.causal)
    return flops, 1, ({w.seq_len: flops} if w.causal else {})


def step_work(p: Problem) -> Work:
    m, w, n = p.model, p.workload, p.world_size
    tokens = math.ceil(w.tokens / n)
    e = p.elem_bytes
    work = Work()
    blocks = 2 if m.kind == "video" else 1  # the video layer: a spatial and a temporal block
    mlp_mats = 2 if m.kind == "video" else 3
    gemm = (
        2.0
        * tokens
        * (m.hidden * m.head_dim * (2 * m.heads + 2 * m.kv_heads) + mlp_mats * m.hidden * m.ffn_hidden)
    )
    elementwise = tokens * (HIDDEN_PASSES * m.hidden + FFN_PASSES * m.ffn_hidden) * e
    attention_weights = blocks * m.hidden * m.head_dim * (2 * m.heads + 2 * m.kv_heads)
    mlp_weights = blocks * mlp_mats * m.hidden * m.ffn_hidden
    if n == 1 or p.method == "tp_sp":  # TP-SP shards its weights: only the norms' gradients are summed
        weight_passes = 0.0
    elif p.method == "odysseus":  # attention weights sharded as in TP-SP, the MLP's in FSDP2
        weight_passes = ZERO3_PASSES * mlp_weights
    else:
        weight_passes = (ZERO3_PASSES if zero3(p) else SUM_GRAD_PASSES) * (attention_weights + mlp_weights)
    softmax: tuple[float, int, dict[int, float]] | None = None
    for i in range(m.layers):
        work.work["gemm"] += (1 + BACKWARD) * blocks * gemm
        work.calls["gemm"] += (1 + BACKWARD) * blocks * GEMM_CALLS
        work.work["elementwise"] += (1 + BACKWARD) * blocks * elementwise + weight_passes * e
        work.calls["elementwise"] += (1 + BACKWARD) * blocks * ELEMENTWISE_CALLS
        if m.kind == "video":  # spatial attention over S per frame, temporal over T per position
            flops, calls = 4.0 * w.tokens * (w.spatial + w.frames) * m.heads * m.head_dim / n, 2
        elif is_softmax_layer(m, i):  # every softmax layer of a stack has the same shapes
            softmax = softmax or _softmax_layer(p, work)
            flops, calls, causal = softmax
            for length, f in causal.items():
                work.causal_work[length] = work.causal_work.get(length, 0.0) + (1 + BACKWARD) * f
        else:  # linear attention: the state products and the masked intra-chunk products
            chunk = min(LINEAR_CHUNK, w.seq_len)
            flops = 4.0 * w.tokens * m.heads * m.head_dim * (m.head_dim + chunk) / n
            calls = 1
            work.linear_attention_flops += (1 + BACKWARD) * flops
        work.work["attention"] += (1 + BACKWARD) * flops
        work.calls["attention"] += 2 * calls
    return work
