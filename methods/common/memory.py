"""Per-rank memory of one training step, in the categories the harness's tensor-level tracker
(harness/memory.py) measures, so a method's memory model and a dryrun compare number for number:

    param  the rank's parameter and buffer storage (a ZeRO-3 rank: its shards)
    input  the rank's input shard x and upstream gradient dy
    act    what the forward leaves alive for the backward: saved activations and the output
    grad   the rank's parameter gradients and the input gradient, after the step
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .attention import acc_dtype
from .config import Problem
from .layers import is_softmax_layer
from .options import zero3
from .video import video_options


@dataclass(frozen=True)
class MemCost:
    param: int
    input: int
    act: int
    grad: int

    @property
    def total(self) -> int:
        """The four categories added up: saved activations, gradients, parameters and inputs side by
        side. The step's peak differs either way: the backward adds transient buffers, but frees
        activations as gradients appear, so this is a scale for the peak, not a bound."""
        return self.param + self.input + self.act + self.grad

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# ---- shared pieces of the memory models ------------------------------------------------------------
# What autograd keeps from the forward, read off the layers in layers.py: every term below names the
# tensors a backward formula needs (PyTorch saves an operand only when the other operand's gradient
# needs it, e.g. x * cos with a constant cos keeps cos, not x).

INDEX_BYTES = 8  # int64 token positions
DECAY_BYTES = 8  # float64 per-head decays
COND_BYTES = 8  # the float64 adaLN conditioning vector (video.py)


def acc_bytes(dtype: torch.dtype) -> int:
    """Element size of the accumulation dtype (attention LSEs, RMSNorm statistics, states)."""
    return acc_dtype(dtype).itemsize


def low_precision(dtype: torch.dtype) -> bool:
    """RMSNorm upcasts bf16/fp16 inputs to float32, which then becomes what it saves."""
    return dtype in (torch.bfloat16, torch.float16)


def rms_norm_act(tokens: int, hidden: int, dtype: torch.dtype) -> int:
    """One RMSNorm on `tokens` rows: the rsqrt statistic [T, 1], the normalised rows (saved by the
    weight product) and the weighted output (saved by the linears after it); a low-precision input
    adds its float32 copy (saved by pow and the product). A full-precision input is the residual
    stream itself, counted by `residual_act`."""
    e = dtype.itemsize
    upcast = tokens * hidden * 4 if low_precision(dtype) else 0
    return upcast + tokens * acc_bytes(dtype) + 2 * tokens * hidden * e


def residual_act(tokens: int, hidden: int, blocks: int, dtype: torch.dtype) -> int:
    """The residual stream of `blocks` pre-norm blocks (two residual adds each): in full precision
    every add's result is the next norm's saved input, so all 2*blocks stay; in low precision the
    norms keep float32 copies instead and only the last one, the step's output, is alive."""
    per_add = tokens * hidden * dtype.itemsize
    return per_add if low_precision(dtype) else 2 * blocks * per_add


def swiglu_act(tokens: int, ffn_hidden: int, elem: int) -> int:
    """w1 and w3 outputs (silu's input and the product's operand), silu's output and the product
    (w2's input)."""
    return 4 * tokens * ffn_hidden * elem


def rope_act(positions: int, head_dim: int, elem: int) -> int:
    """The cos and sin tables [positions, D/2] the rotation keeps (q and k themselves are not saved)."""
    return positions * head_dim * elem


def softmax_core_act(
    batch: int, q_rows: int, heads: int, kv_rows: int, kv_heads: int, head_dim: int, dtype: torch.dtype
) -> int:
    """The attention autograd functions' saved q [B, Lq, H, D], k and v [B, Lk, Hkv, D], output and
    LSE [B, H, Lq] (accumulation dtype)."""
    e = dtype.itemsize
    return batch * head_dim * e * (
        2 * q_rows * heads + 2 * kv_rows * kv_heads
    ) + batch * heads * q_rows * acc_bytes(dtype)


def llama_layer_act(p: Problem, tokens: int, positions: int, attention: int, mlp: int | None = None) -> int:
    """Saved activations of one Llama-style layer (both norms, RoPE tables, SwiGLU) on `tokens` local
    rows at `positions` RoPE positions, plus `attention`: what the method's attention keeps between
    the q/k/v projections and Wo's saved input, that input included. `mlp` replaces the SwiGLU on
    the local rows when the method splits it otherwise. Residuals: `residual_act`."""
    m, e = p.model, p.elem_bytes
    if mlp is None:
        mlp = swiglu_act(tokens, m.ffn_hidden, e)
    return (
        2 * rms_norm_act(tokens, m.hidden, p.torch_dtype)
        + rope_act(positions, m.head_dim, e)
        + mlp
        + attention
    )


def decay_buffers(p: Problem, heads: int) -> int:
    """Bytes of the float64 per-head decay buffers of `heads` heads in every linear layer of a model
    with `decay` (layers.py's LinearAttentionLayer; FSDP2 shards parameters, not buffers)."""
    m = p.model
    if m.kind not in ("linear", "hybrid") or not m.extra.get("decay"):
        return 0
    return sum(not is_softmax_layer(m, i) for i in range(m.layers)) * heads * DECAY_BYTES


def replicated_param(p: Problem, block_shapes: list[tuple[int, ...]], positions_storage: int = 0) -> int:
    """Every block's parameters on every rank (or, with `method.zero3`, this rank's FSDP2 shards,
    padded on dim 0), the storage of the positions buffer (`positions_storage` int64 elements) and
    the decay buffers."""
    n, layers = p.world_size, p.model.layers
    if zero3(p):
        per_layer = sum(-(-s[0] // n) * math.prod(s[1:]) for s in block_shapes)
    else:
        per_layer = sum(math.prod(s) for s in block_shapes)
    return (
        layers * per_layer * p.elem_bytes + positions_storage * INDEX_BYTES + decay_buffers(p, p.model.heads)
    )


def replicated_memory(
    p: Problem, block_shapes: list[tuple[int, ...]], tokens: int, positions_storage: int, layer_act: list[int]
) -> MemCost:
    """A stack whose weights are replicated (or ZeRO-3 sharded) over the ranks, run on `tokens` local
    rows of width d (ReplicatedSequenceModel and the like): `layer_act` holds each layer's saved
    activations without the residual stream, which this adds."""
    d, e = p.model.hidden, p.elem_bytes
    stream = tokens * d * e
    param = replicated_param(p, block_shapes, positions_storage)
    weights = param - positions_storage * INDEX_BYTES - decay_buffers(p, p.model.heads)
    return MemCost(
        param=param,
        input=2 * stream,
        act=sum(layer_act) + residual_act(tokens, d, len(layer_act), p.torch_dtype),
        grad=weights + stream,
    )


def positions_storage(length: int, n: int) -> int:
    """int64 elements behind one rank's index tensor of a layout (layout.py): every layout gives each
    rank its own L/N positions."""
    return length // n


def linear_kernel_act(
    batch: int,
    length: int,
    heads: int,
    head_dim: int,
    dtype: torch.dtype,
    causal: bool,
    decay: bool,
    chunk: int = 64,
) -> int:
    """What LinearKernel (linear_attention.py) keeps on q/k/v [B, length, heads, D] (kv heads already
    repeated to `heads`), its output excluded: its torch path, the one CPU runs and dryruns take (the
    optional fla kernel on CUDA keeps its own). G = B*heads; causal runs cut the sequence into
    n = ceil(L/c) chunks of c = min(chunk, L) tokens, the last zero-padded to c (Lp = n*c).

    Causal, every chunk at once: the head-major copies of q, k, v [B, heads, Lp, D] (3 G Lp D, input
    dtype; the batched products keep views of them), the masked intra-chunk scores (G n c^2) and the
    constant mask (c^2, or heads*c^2 with a decay). With more than one chunk, the states' and the
    inter-chunk products add, in the accumulation dtype: the zero-led prefix states (G n D^2); q and
    k as those products read them (G Lp D each, unless they are the head-major copies themselves:
    same dtype and no decay to apply) and v (G Lp D, in a low-precision run); with a decay, the row
    weights a and b (heads*c each) and the doubling scan's factors lambda^(c s) (heads per step,
    ceil(log2(n-1)) steps). Nothing else: the scan's sums and the chunk states are not saved.

    Bidirectional attention is the quadratic product (naive_linear_attention): its own copies of q, k,
    v, the scores (G L^2) and the all-ones weights (L^2); no state, no decay (the kernel ignores it
    there)."""
    e, acc = dtype.itemsize, acc_bytes(dtype)
    g = batch * heads
    if not causal:
        return 3 * g * length * head_dim * e + g * length * length * e + length * length * e
    c = min(chunk, length)
    n = -(-length // c)
    padded = n * c
    total = 3 * g * padded * head_dim * e + g * n * c * c * e + (heads if decay else 1) * c * c * e
    if n == 1:
        return total
    low = acc_dtype(dtype) != dtype
    total += g * n * head_dim * head_dim * acc
    total += (2 * (low or decay) + low) * g * padded * head_dim * acc  # q, k (as read), v (low only)
    if decay:
        total += 2 * heads * c * acc + (n - 2).bit_length() * heads * acc
    return total


# ---- the video block (video.py) ---------------------------------------------------------------------
# A VideoBlock's LayerNorms save their input whatever the dtype, so every block boundary of the stream
# stays alive; which storage that is (the previous block's output, or a copy a reshape or exchange
# made) is the method's business, so the terms below leave a block's input and output to the caller.


def layer_norm_act(tokens: int, hidden: int, elem: int, stats_elem: int) -> int:
    """One LayerNorm on `tokens` rows, its saved input excluded: the mean and rstd [T, 1] of
    `stats_elem` bytes (the input dtype on CPU, float32 for half inputs on CUDA) and the normalised
    rows (saved by the linears after it, or by the adaLN modulation), affine or not."""
    return 2 * tokens * stats_elem + tokens * hidden * elem


def gelu_mlp_act(tokens: int, ffn_hidden: int, elem: int) -> int:
    """fc1's output (GELU's saved input) and GELU's output (fc2's saved input)."""
    return 2 * tokens * ffn_hidden * elem


def video_rope_positions(p: Problem, frames: int) -> int:
    """RoPE positions of a temporal block over `frames` frames: the model's `temporal_rope` decides;
    spatial blocks have none."""
    return frames if video_options(p.model).temporal_rope else 0


def qk_norm_act(rows: int, head_dim: int, dtype: torch.dtype, input_saved: bool = True) -> int:
    """RMSNorm over D of `rows` head vectors (q or k rows times their heads), beyond what the
    attention keeps of its output: the statistic [rows, 1] and the normalised rows (saved by the
    weight product); in full precision its input (pow and the product keep it: the projection's
    output, unless `input_saved` says it is alive anyway), in low precision the float32 copy instead."""
    e = dtype.itemsize
    source = rows * head_dim * 4 if low_precision(dtype) else (rows * head_dim * e if input_saved else 0)
    return source + rows * acc_bytes(dtype) + rows * head_dim * e


def adaln_block_act(p: Problem, tokens: int) -> int:
    """What a block's adaLN modulation adds on `tokens` rows: each of the two modulations keeps the
    normalised rows (the product with 1 + scale; the linears after it keep its result instead of the
    norm's) and 1 + scale [B, C]; each gate keeps the branch output (Wo's, fc2's) and, through its
    view, the modulation linear's [B, 6C] output."""
    if not video_options(p.model).adaln:
        return 0
    d, e, b = p.model.hidden, p.elem_bytes, p.workload.batch_size
    return 4 * tokens * d * e + 2 * b * d * e + 6 * b * d * e


def video_block_act(
    p: Problem,
    tokens: int,
    positions: int,
    attention: int,
    mlp: int | None = None,
    qk_norm: int | None = None,
) -> int:
    """Saved activations of one VideoBlock on `tokens` local rows: both LayerNorms, the residual sum
    between them (the second norm's input), RoPE tables at `positions` (0: none), the GELU MLP (or
    `mlp`, when the method splits it otherwise), the qk-norms of the model's `qk_norm` on q and k of
    the `tokens` rows (or `qk_norm` bytes, when the method's heads and rows differ), the adaLN
    modulation, plus `attention`: what the method's attention keeps between the q/k/v projections
    (the qk-norms' outputs) and Wo's saved input, that input included. The block's own input (the
    first norm's) and output are left to the caller."""
    m, e = p.model, p.elem_bytes
    if mlp is None:
        mlp = gelu_mlp_act(tokens, m.ffn_hidden, e)
    if qk_norm is None:
        qk_norm = qk_norm_act(tokens * (m.heads + m.kv_heads), m.head_dim, p.torch_dtype)
    if not video_options(m).qk_norm:
        qk_norm = 0
    residual = tokens * m.hidden * e
    stats = acc_bytes(p.torch_dtype) if p.on_gpu else e
    norms = 2 * layer_norm_act(tokens, m.hidden, e, stats)
    rope = rope_act(positions, m.head_dim, e)
    return norms + residual + rope + mlp + attention + qk_norm + adaln_block_act(p, tokens)


def video_memory(p: Problem, weights: int, tokens: int, act: int) -> MemCost:
    """A video method's step: `weights` parameter bytes, the float64 conditioning buffer c [B, C]
    with adaLN, x and dy of `tokens` local rows of width d, `act` saved plus SiLU(c) (every block's
    modulation keeps it) and its cast to the compute dtype (SiLU keeps it) unless that is float64;
    after the step every weight and x hold a gradient."""
    m, e, b = p.model, p.elem_bytes, p.workload.batch_size
    stream = tokens * m.hidden * e
    cond, cond_act = 0, 0
    if video_options(m).adaln:
        cond = b * m.hidden * COND_BYTES
        cond_act = b * m.hidden * e
    return MemCost(param=weights + cond, input=2 * stream, act=act + cond_act, grad=weights + stream)
