"""The TP-SP block (Megatron tensor + sequence parallelism, arXiv 2205.05198).

Outside attention and the MLP every rank holds a contiguous sequence shard [B, L/N, d]. Column-parallel
linears (packed per rank as [Wq_r; Wk_r; Wv_r] and [W1_r; W3_r]) all-gather their input along the
sequence and keep only the local shard for backward, where they gather it again (Megatron's
memory-saving re-gather); row-parallel linears (Wo, W2) end in a reduce-scatter along the sequence.
Per layer: 6 all-gathers + 4 reduce-scatters of one full hidden state, plus one SUM all-reduce of
the replicated norm-weight gradients per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from methods.common.collectives import all_gather_dim, reduce_scatter_dim, reduce_scatter_seq, sum_grads
from methods.common.layers import apply_rope, copy_to, rope_cos_sin
from methods.common.linear_attention import LinearKernel
from methods.common.sharding import cols, local_param, rows


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


class TensorParallelAttention(nn.Module):
    """Megatron attention: packed per-rank QKV column linear, local heads over the whole sequence,
    row-parallel Wo with a reduce-scatter back to the sequence shard."""

    def __init__(
        self, ref_attn: nn.Module, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device
    ):
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
        wqkv = torch.cat(
            [rows(ref_attn.wq.weight, r, n), rows(ref_attn.wk.weight, r, n), rows(ref_attn.wv.weight, r, n)]
        )
        self.wqkv = local_param(wqkv, dtype, device)
        self.wo = local_param(cols(ref_attn.wo.weight, r, n), dtype, device)

    def forward(self, x_local: torch.Tensor, causal: bool) -> torch.Tensor:
        c = self.cfg
        qkv = column_linear_sp(x_local, self.wqkv, self.group)  # [B, L, (h + 2 hkv) D]
        B, L, _ = qkv.shape
        q, k, v = qkv.split(
            [self.heads * c.head_dim, self.kv_heads * c.head_dim, self.kv_heads * c.head_dim], -1
        )
        q, k, v = q.view(B, L, -1, c.head_dim), k.view(B, L, -1, c.head_dim), v.view(B, L, -1, c.head_dim)
        cos, sin = rope_cos_sin(torch.arange(L, device=qkv.device), c.head_dim, c.rope_theta, qkv.dtype)
        o = self.local_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, causal)
        return reduce_scatter_seq(o.reshape(B, L, -1) @ self.wo.t(), self.group)

    def full_grads(self, prefix: str) -> dict[str, torch.Tensor]:
        hd = self.cfg.head_dim
        gq, gk, gv = self.wqkv.grad.split([self.heads * hd, self.kv_heads * hd, self.kv_heads * hd], 0)
        return {
            f"{prefix}.wq.weight": all_gather_dim(gq, 0, self.group),
            f"{prefix}.wk.weight": all_gather_dim(gk, 0, self.group),
            f"{prefix}.wv.weight": all_gather_dim(gv, 0, self.group),
            f"{prefix}.wo.weight": all_gather_dim(self.wo.grad, 1, self.group),
        }


class TensorParallelMLP(nn.Module):
    def __init__(
        self, ref_mlp: nn.Module, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device
    ):
        super().__init__()
        n, r = dist.get_world_size(group), dist.get_rank(group)
        self.group = group
        self.w13 = local_param(
            torch.cat([rows(ref_mlp.w1.weight, r, n), rows(ref_mlp.w3.weight, r, n)]), dtype, device
        )
        self.w2 = local_param(cols(ref_mlp.w2.weight, r, n), dtype, device)

    def forward(self, x_local: torch.Tensor) -> torch.Tensor:
        gate, up = column_linear_sp(x_local, self.w13, self.group).chunk(2, dim=-1)
        return reduce_scatter_seq((F.silu(gate) * up) @ self.w2.t(), self.group)

    def full_grads(self, prefix: str) -> dict[str, torch.Tensor]:
        g1, g3 = self.w13.grad.chunk(2, dim=0)
        return {
            f"{prefix}.w1.weight": all_gather_dim(g1, 0, self.group),
            f"{prefix}.w3.weight": all_gather_dim(g3, 0, self.group),
            f"{prefix}.w2.weight": all_gather_dim(self.w2.grad, 1, self.group),
        }


MLPBuilder = Callable[[nn.Module, dist.ProcessGroup, torch.dtype, torch.device], nn.Module]


class TPSPBlock(nn.Module):
    """Norms and residuals on the sequence shard; tensor-parallel attention; the MLP from `make_mlp`
    (tensor-parallel here, ZeRO-3 sequence-parallel in Odysseus)."""

    def __init__(
        self,
        ref_block: nn.Module,
        group: dist.ProcessGroup,
        dtype: torch.dtype,
        device: torch.device,
        make_mlp: MLPBuilder = TensorParallelMLP,
    ):
        super().__init__()
        self.attn_norm = copy_to(ref_block.attn_norm, device, dtype)  # replicated
        self.mlp_norm = copy_to(ref_block.mlp_norm, device, dtype)
        self.attn = TensorParallelAttention(ref_block.attn, group, dtype, device)
        self.mlp = make_mlp(ref_block.mlp, group, dtype, device)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), causal)
        return x + self.mlp(self.mlp_norm(x))


class TPSPModel(nn.Module):
    def __init__(
        self,
        reference: nn.Module,
        causal: bool,
        group: dist.ProcessGroup,
        dtype: torch.dtype,
        device: torch.device,
        make_mlp: MLPBuilder = TensorParallelMLP,
    ):
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
