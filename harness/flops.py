"""Model FLOPs of one training step (forward + backward = 3x forward), the usual MFU convention
(PaLM App. B; torchtitan). Attention counts QK^T and PV; causal attention is also reported with
the masked half removed ("causal-effective"), and MFU uses the causal-effective count."""

from __future__ import annotations

from collections.abc import Callable

from methods.common.config import Problem
from methods.common.layers import is_softmax_layer
from methods.common.video import video_options


def llama_forward_flops(p: Problem) -> tuple[float, float]:
    """(dense, causal-effective) forward FLOPs of the whole stack for one step's tokens. Linear
    attention layers (linear / hybrid kinds) count the right-product form: the state K^T V and Q
    times the state, 4 B L H D^2, the same with or without the causal mask."""
    m, w = p.model, p.workload
    tokens = w.batch_size * w.seq_len
    projections = (
        2 * tokens * (m.hidden * m.head_dim * (2 * m.heads + 2 * m.kv_heads) + 3 * m.hidden * m.ffn_hidden)
    )
    softmax = 4 * w.batch_size * w.seq_len**2 * m.heads * m.head_dim
    linear = 4 * tokens * m.heads * m.head_dim**2
    dense = effective = 0.0
    for i in range(m.layers):
        if is_softmax_layer(m, i):
            dense += projections + softmax
            effective += projections + (softmax / 2 if w.causal else softmax)
        else:
            dense += projections + linear
            effective += projections + linear
    return dense, effective


def video_forward_flops(p: Problem) -> tuple[float, float]:
    """Spatial block (attention over S per frame) + temporal block (over T per position), non-causal.
    With adaLN each block's modulation adds Linear(C, 6C) on the B conditioning vectors (once per
    sample, not per token); norms, qk-norms and the modulation's products are not matmuls."""
    m, w = p.model, p.workload
    tokens = w.batch_size * w.frames * w.spatial
    per_block = (
        2 * tokens * (m.hidden * m.head_dim * (2 * m.heads + 2 * m.kv_heads) + 2 * m.hidden * m.ffn_hidden)
    )
    if video_options(m).adaln:
        per_block += 2 * w.batch_size * m.hidden * 6 * m.hidden
    attention = 4 * tokens * (w.spatial + w.frames) * m.heads * m.head_dim
    total = m.layers * (2 * per_block + attention)
    return total, total


FORWARD_FLOPS: dict[str, Callable[[Problem], tuple[float, float]]] = {
    "llama": llama_forward_flops,
    "linear": llama_forward_flops,
    "hybrid": llama_forward_flops,
    "video": video_forward_flops,
}


def step_flops(p: Problem) -> tuple[float, float]:
    """(dense, causal-effective) FLOPs of one training step over all ranks."""
    dense, effective = FORWARD_FLOPS[p.model.kind](p)
    return 3 * dense, 3 * effective
