"""Model FLOPs of one training step (forward + backward = 3x forward), the usual MFU convention
(PaLM App. B; torchtitan). Attention counts QK^T and PV; causal attention is also reported with
the masked half removed ("causal-effective"), and MFU uses the causal-effective count."""
from __future__ import annotations

from typing import Callable

from methods.common.config import Problem


def llama_forward_flops(p: Problem) -> tuple[float, float]:
    """(dense, causal-effective) forward FLOPs of the whole stack for one step's tokens."""
    m, w = p.model, p.workload
    tokens = w.batch_size * w.seq_len
    linear = 2 * tokens * (m.hidden * m.head_dim * (2 * m.heads + 2 * m.kv_heads) + 3 * m.hidden * m.ffn_hidden)
    attn = 4 * w.batch_size * w.seq_len ** 2 * m.heads * m.head_dim
    effective = attn / 2 if w.causal else attn
    return m.layers * (linear + attn), m.layers * (linear + effective)


FORWARD_FLOPS: dict[str, Callable[[Problem], tuple[float, float]]] = {"llama": llama_forward_flops}


def step_flops(p: Problem) -> tuple[float, float]:
    """(dense, causal-effective) FLOPs of one training step over all ranks."""
    dense, effective = FORWARD_FLOPS[p.model.kind](p)
    return 3 * dense, 3 * effective
