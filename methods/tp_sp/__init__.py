"""Megatron tensor + sequence parallelism (arXiv 2205.05198).

Outside attention and the MLP every rank holds a contiguous sequence shard [B, L/N, d]. Column-parallel
linears (packed per rank as [Wq_r; Wk_r; Wv_r] and [W1_r; W3_r]) all-gather their input along the
sequence and keep only the local shard for backward, where they gather it again (Megatron's
memory-saving re-gather); row-parallel linears (Wo, W2) end in a reduce-scatter along the sequence.
Per layer: 6 all-gathers + 4 reduce-scatters of one full hidden state, plus one SUM all-reduce of
the replicated norm-weight gradients per step.
"""
from __future__ import annotations


from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from methods import Method, register
from methods.common import layout as layouts
from methods.common.collectives import all_gather_dim, reduce_scatter_dim, reduce_scatter_seq, sum_grads
from methods.common.config import InvalidConfig, Problem
from methods.common.cost import CommCost
from methods.common.layers import apply_rope, copy_to, is_softmax_layer, rope_cos_sin
from methods.common.linear_attention import LinearKernel
from methods.common.memory import MemCost, decay_buffers, linear_kernel_act, llama_layer_act, residual_act, softmax_core_act, swiglu_act


class _ColumnLinearSP(torch.autograd.Function):
    """y = all_gather_seq(x) @ W^T, saving only the local x; backward re-gathers x for dW and
    reduce-scatters dx."""

    @staticmethod
    def forward(ctx, x_local, weight, group):
        ctx.group = group
        ctx.save_for_backward(x_local, weight)
        return all_gather_dim(x_local, 1, group) @ weight.t()

    @staticmethod
    def backward(ctx, dy):
        x_local, weight = ctx.saved_tensors
        x_full = all_gather_dim(x_local, 1, ctx.group)  # the re-gather
        dx_local = reduce_scatter_dim(dy @ weight, 1, ctx.group)
        dweight = dy.flatten(0, 1).t() @ x_full.flatten(0, 1)
        return dx_local, dweight, None


def column_linear_sp(x_local: torch.Tensor, weight: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _ColumnLinearSP.apply(x_local, weight, group)


def rows(weight: torch.Tensor, rank: int, n: int) -> torch.Tensor:
    """Rank's contiguous block of output rows of a [out, in] weight."""
    return weight.chunk(n, dim=0)[rank]


def cols(weight: torch.Tensor, rank: int, n: int) -> torch.Tensor:
    return weight.chunk(n, dim=1)[rank]


class TensorParallelAttention(nn.Module):
    """Megatron attention: packed per-rank QKV column linear, local heads over the whole sequence,
    row-parallel Wo with a reduce-scatter back to the sequence shard."""

    def __init__(self, ref_attn: nn.Module, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device):
        super().__init__()
        c, n, r = ref_attn.cfg, dist.get_world_size(group), dist.get_rank(group)
        self.cfg, self.group = c, group
        self.heads, self.kv_heads = c.heads // n, c.kv_heads // n
        self.local_attention = ref_attn.local_attention  # the layer's single-device kernel
        if hasattr(self.local_attention, "for_heads"):  # per-head kernel state: this rank's heads only
            self.local_attention = self.local_attention.for_heads(r * self.heads, self.heads)
            if self.local_attention.decay is not None:  # kept as this module's buffer, on its device
                self.register_buffer("decay", self.local_attention.decay.to(device).clone(), persistent=False)
                self.local_attention = LinearKernel(self.decay, self.local_attention.chunk)
        wqkv = torch.cat([rows(ref_attn.wq.weight, r, n), rows(ref_attn.wk.weight, r, n), rows(ref_attn.wv.weight, r, n)])
        self.wqkv = _param(wqkv, dtype, device)
        self.wo = _param(cols(ref_attn.wo.weight, r, n), dtype, device)

    def forward(self, x_local: torch.Tensor, causal: bool) -> torch.Tensor:
        c = self.cfg
        qkv = column_linear_sp(x_local, self.wqkv, self.group)  # [B, L, (h + 2 hkv) D]
        B, L, _ = qkv.shape
        q, k, v = qkv.split([self.heads * c.head_dim, self.kv_heads * c.head_dim, self.kv_heads * c.head_dim], -1)
        q, k, v = q.view(B, L, -1, c.head_dim), k.view(B, L, -1, c.head_dim), v.view(B, L, -1, c.head_dim)
        cos, sin = rope_cos_sin(torch.arange(L, device=qkv.device), c.head_dim, c.rope_theta, qkv.dtype)
        o = self.local_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, causal)
        return reduce_scatter_seq(o.reshape(B, L, -1) @ self.wo.t(), self.group)

    def full_grads(self, prefix: str) -> dict[str, torch.Tensor]:
        hd = self.cfg.head_dim
        gq, gk, gv = self.wqkv.grad.split([self.heads * hd, self.kv_heads * hd, self.kv_heads * hd], 0)
        return {f"{prefix}.wq.weight": all_gather_dim(gq, 0, self.group),
                f"{prefix}.wk.weight": all_gather_dim(gk, 0, self.group),
                f"{prefix}.wv.weight": all_gather_dim(gv, 0, self.group),
                f"{prefix}.wo.weight": all_gather_dim(self.wo.grad, 1, self.group)}


class TensorParallelMLP(nn.Module):
    def __init__(self, ref_mlp: nn.Module, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device):
        super().__init__()
        n, r = dist.get_world_size(group), dist.get_rank(group)
        self.group = group
        self.w13 = _param(torch.cat([rows(ref_mlp.w1.weight, r, n), rows(ref_mlp.w3.weight, r, n)]), dtype, device)
        self.w2 = _param(cols(ref_mlp.w2.weight, r, n), dtype, device)

    def forward(self, x_local: torch.Tensor) -> torch.Tensor:
        gate, up = column_linear_sp(x_local, self.w13, self.group).chunk(2, dim=-1)
        return reduce_scatter_seq((F.silu(gate) * up) @ self.w2.t(), self.group)

    def full_grads(self, prefix: str) -> dict[str, torch.Tensor]:
        g1, g3 = self.w13.grad.chunk(2, dim=0)
        return {f"{prefix}.w1.weight": all_gather_dim(g1, 0, self.group),
                f"{prefix}.w3.weight": all_gather_dim(g3, 0, self.group),
                f"{prefix}.w2.weight": all_gather_dim(self.w2.grad, 1, self.group)}


def _param(weight: torch.Tensor, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(weight.detach().to(device=device, dtype=dtype, copy=True))


MLPBuilder = Callable[[nn.Module, dist.ProcessGroup, torch.dtype, torch.device], nn.Module]


class TPSPBlock(nn.Module):
    """Norms and residuals on the sequence shard; tensor-parallel attention; the MLP from `make_mlp`
    (tensor-parallel here, ZeRO-3 sequence-parallel in Odysseus)."""

    def __init__(self, ref_block: nn.Module, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device,
                 make_mlp: MLPBuilder = TensorParallelMLP):
        super().__init__()
        self.attn_norm = copy_to(ref_block.attn_norm, device, dtype)  # replicated
        self.mlp_norm = copy_to(ref_block.mlp_norm, device, dtype)
        self.attn = TensorParallelAttention(ref_block.attn, group, dtype, device)
        self.mlp = make_mlp(ref_block.mlp, group, dtype, device)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), causal)
        return x + self.mlp(self.mlp_norm(x))


class TPSPModel(nn.Module):
    def __init__(self, reference: nn.Module, causal: bool, group: dist.ProcessGroup, dtype: torch.dtype,
                 device: torch.device, make_mlp: MLPBuilder = TensorParallelMLP):
        super().__init__()
        self.blocks = nn.ModuleList(TPSPBlock(b, group, dtype, device, make_mlp) for b in reference.blocks)
        self.causal, self.group = causal, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, self.causal)
        return x

    def norm_weights(self) -> list[nn.Parameter]:
        return [p for b in self.blocks for p in (b.attn_norm.weight, b.mlp_norm.weight)]

    def finish_grads(self) -> None:
        # Norm weights are replicated but each rank normalised only its own tokens.
        sum_grads(self.norm_weights(), self.group)

    def full_grads(self) -> dict[str, torch.Tensor]:
        grads = {}
        for i, b in enumerate(self.blocks):
            grads[f"blocks.{i}.attn_norm.weight"] = b.attn_norm.weight.grad
            grads[f"blocks.{i}.mlp_norm.weight"] = b.mlp_norm.weight.grad
            grads.update(b.attn.full_grads(f"blocks.{i}.attn"))
            grads.update(b.mlp.full_grads(f"blocks.{i}.mlp"))
        return grads


# ---- layout, checks, build -------------------------------------------------------------------------

def check_heads(p: Problem) -> None:
    m, n = p.model, p.world_size
    for name, value in (("heads", m.heads), ("kv_heads", m.kv_heads)):
        if value % n:
            raise InvalidConfig(f"{name}={value} is not divisible by the TP degree {n}: "
                                "column-parallel linears give each rank whole heads")
    layouts.check_divisible("contiguous", p.workload.seq_len, n)


def validate(p: Problem) -> None:
    check_heads(p)
    m, n = p.model, p.world_size
    for name, value in (("ffn_hidden", m.ffn_hidden),):
        if value % n:
            raise InvalidConfig(f"{name}={value} is not divisible by the TP degree {n}: "
                                "column-parallel linears give each rank an equal slice")


@layouts.real_indices
def layout(p: Problem) -> list[torch.Tensor]:
    return layouts.make("contiguous", p.workload.seq_len, p.world_size)


def build(p: Problem, reference: nn.Module, device: torch.device) -> TPSPModel:
    return TPSPModel(reference, p.workload.causal, dist.group.WORLD, p.torch_dtype, device)


# ---- cost model ------------------------------------------------------------------------------------

def hidden_state_bytes(p: Problem) -> int:
    """S: one full [B, L, d] hidden state, the unit of every TP-SP collective."""
    return p.workload.batch_size * p.workload.seq_len * p.model.hidden * p.elem_bytes


def attention_cost(p: Problem) -> CommCost:
    """Per layer: g before QKV (AG fwd, RS bwd), g-bar after Wo (RS fwd, AG bwd), the re-gather (AG bwd)."""
    s, n = hidden_state_bytes(p), p.world_size
    return (CommCost().add("fwd", "all_gather", s, n).add("fwd", "reduce_scatter", s, n)
            .add("bwd", "all_gather", s, n, times=2).add("bwd", "reduce_scatter", s, n))


def norm_sync_cost(p: Problem) -> CommCost:
    """One SUM all-reduce of the two norm weights' gradients of every layer."""
    return CommCost().add("bwd", "all_reduce", 2 * p.model.layers * p.model.hidden * p.elem_bytes, p.world_size)


def comm_cost(p: Problem) -> CommCost:
    cost = CommCost()
    for _ in range(p.model.layers):
        cost += attention_cost(p) + attention_cost(p)  # the MLP's column/row pair moves the same
    return cost + norm_sync_cost(p)


# ---- memory model ----------------------------------------------------------------------------------

def attention_act(p: Problem, softmax: bool = True) -> int:
    """Per layer on this rank's heads over the whole sequence. Softmax: the packed QKV output (v, a
    view of it, keeps it whole), the rotated q and k, the kernel's output (also Wo's input) and LSE.
    Linear: what the linear kernel keeps (it copies q, k, v) and its output, Wo's input. The column
    linear keeps only the local normed shard, counted with the norm."""
    m, w, n, e = p.model, p.workload, p.world_size, p.elem_bytes
    heads, kv_heads, L = m.heads // n, m.kv_heads // n, w.seq_len
    if not softmax:
        return (w.batch_size * L * heads * m.head_dim * e
                + linear_kernel_act(w.batch_size, L, heads, m.head_dim, p.torch_dtype, w.causal, bool(m.extra.get("decay"))))
    qkv = w.batch_size * L * (heads + 2 * kv_heads) * m.head_dim * e
    v = w.batch_size * L * kv_heads * m.head_dim * e
    return qkv - v + softmax_core_act(w.batch_size, L, heads, L, kv_heads, m.head_dim, p.torch_dtype)


def tp_layer_act(p: Problem, mlp: int, index: int) -> int:
    """Layer `index` of TP-SP: norms on the sequence shard, RoPE tables over the whole sequence, the
    attention above and the method's MLP."""
    w = p.workload
    return llama_layer_act(p, w.batch_size * w.seq_len // p.world_size, w.seq_len,
                           attention_act(p, is_softmax_layer(p.model, index)), mlp)


def tp_memory(p: Problem, mlp_params: int, mlp_act: int) -> MemCost:
    """TP-SP's shared shape (Odysseus too): replicated norms, the rank's packed attention weights,
    an MLP of `mlp_params` elements per layer on this rank saving `mlp_act` bytes."""
    m, w, n, e = p.model, p.workload, p.world_size, p.elem_bytes
    attention = (m.heads + 2 * m.kv_heads) // n * m.head_dim * m.hidden + m.hidden * m.heads // n * m.head_dim
    weights = m.layers * (2 * m.hidden + attention + mlp_params) * e
    tokens = w.batch_size * w.seq_len // n
    stream = tokens * m.hidden * e
    act = sum(tp_layer_act(p, mlp_act, i) for i in range(m.layers)) + residual_act(tokens, m.hidden, m.layers, p.torch_dtype)
    return MemCost(param=weights + decay_buffers(p, m.heads // n), input=2 * stream, act=act, grad=weights + stream)


def memory_cost(p: Problem) -> MemCost:
    """Column-parallel SwiGLU: the packed w1/w3 output (gate and up are views of it), silu's output
    and the product, each over the whole sequence for ffn/N channels."""
    m, w, n = p.model, p.workload, p.world_size
    mlp_params = 3 * m.ffn_hidden // n * m.hidden
    return tp_memory(p, mlp_params, swiglu_act(w.batch_size * w.seq_len, m.ffn_hidden // n, p.elem_bytes))


register(Method("tp_sp", validate=validate, layout=layout, build=build, comm_cost=comm_cost, memory_cost=memory_cost,
                model_kinds=("llama", "linear", "hybrid")))
