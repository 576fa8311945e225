"""The embedded baselines' parallel models on the video block: frames sharded with a distributed
temporal (and optionally spatial) attention core, and Megatron TP-SP around every attention and MLP."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from methods.common.attention import attention
from methods.common.collectives import (
    all_gather_dim,
    heads_to_seq,
    reduce_scatter_seq,
    seq_to_heads,
    sum_grads,
)
from methods.common.layers import apply_rope, copy_to, local_core, rope_cos_sin
from methods.common.sharding import cols, local_param, rows
from methods.common.video import conditioning, gated, modulate, spatial_stage, temporal_stage
from methods.tp_sp import column_linear_sp

from ..model import DSPModel


class FrameShardModel(DSPModel):
    """Frames sharded ([B, T/N, S, C]); temporal attention through `core`; spatial attention local,
    or through `spatial_core` (Ulysses on every attention)."""

    def __init__(
        self,
        reference: nn.Module,
        core,
        group: dist.ProcessGroup,
        dtype: torch.dtype,
        device: torch.device,
        spatial_core=local_core,
    ):
        super().__init__(reference, group, dtype, device)
        self.core, self.spatial_core = core, spatial_core

    def forward(self, x_local: torch.Tensor) -> torch.Tensor:
        m, n, r = self.model, dist.get_world_size(self.group), dist.get_rank(self.group)
        B, _, C = x_local.shape
        x = x_local.view(B, m.frames // n, m.spatial, C)
        frames = torch.arange(r * m.frames // n, (r + 1) * m.frames // n, device=x.device)  # global, for RoPE
        cond = conditioning(m.cond, x.dtype)
        for layer in m.blocks:
            h = spatial_stage(layer.spatial, x, self.spatial_core, cond)
            x = temporal_stage(layer.temporal, h, frames, self.core, cond)
        return x.reshape(B, -1, C)


def spatial_ulysses(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    local,
    group: dist.ProcessGroup,
    frames_local: int,
) -> torch.Tensor:
    """Ulysses for the spatial attention of frame-sharded activations, done right: scatter heads and
    gather the sharded dimension (T), attend over S in every frame, and exchange back.
    q/k/v [B*T/N, S, heads, D] -> out [B*T/N, S, H, D]."""
    batch, spatial = q.shape[0] // frames_local, q.shape[1]

    def frames_to_heads(t):  # [B*T/N, S, h, D] -> [B*T, S, h/N, D]
        t = (
            t.view(batch, frames_local, spatial, *t.shape[2:]).transpose(1, 2).flatten(0, 1)
        )  # [B*S, T/N, h, D]
        t = seq_to_heads(t, group)  # [B*S, T, h/N, D]
        return t.view(batch, spatial, *t.shape[1:]).transpose(1, 2).flatten(0, 1)

    o = local(*(frames_to_heads(t) for t in (q, k, v)), causal)  # [B*T, S, H/N, D]
    o = o.view(batch, -1, *o.shape[1:]).transpose(1, 2).flatten(0, 1)  # [B*S, T, H/N, D]
    o = heads_to_seq(o, group)  # [B*S, T/N, H, D]
    return o.view(batch, spatial, *o.shape[1:]).transpose(1, 2).reshape(q.shape)


class TPVideoBlock(nn.Module):
    """One spatial or temporal block with Megatron TP-SP: the flattened token shard is gathered
    before the QKV / fc1 column linears and reduce-scattered after Wo / fc2. Norms, qk-norms and the
    adaLN modulation are replicated and run on the rank's tokens (qk-norm: on its heads)."""

    REPLICATED = ("norm1", "norm2", "q_norm", "k_norm", "modulation")

    def __init__(self, ref: nn.Module, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device):
        super().__init__()
        c, n, r = ref.attn.cfg, dist.get_world_size(group), dist.get_rank(group)
        self.cfg, self.group, self.use_rope = c, group, ref.attn.use_rope
        self.heads, self.kv_heads = c.heads // n, c.kv_heads // n
        a = ref.attn
        owners = {"norm1": ref, "norm2": ref, "q_norm": a, "k_norm": a, "modulation": ref}
        for name in self.REPLICATED:
            module = getattr(owners[name], name)
            setattr(self, name, None if module is None else copy_to(module, device, dtype))
        self.wqkv = local_param(
            torch.cat([rows(a.wq.weight, r, n), rows(a.wk.weight, r, n), rows(a.wv.weight, r, n)]),
            dtype,
            device,
        )
        self.wo = local_param(cols(a.wo.weight, r, n), dtype, device)
        self.fc1 = local_param(rows(ref.mlp.fc1.weight, r, n), dtype, device)
        self.fc2 = local_param(cols(ref.mlp.fc2.weight, r, n), dtype, device)

    def forward(
        self, x: torch.Tensor, frames: int, spatial: int, temporal: bool, cond: torch.Tensor | None
    ) -> torch.Tensor:
        c, hd = self.cfg, self.cfg.head_dim
        mod = None if self.modulation is None else self.modulation(cond).chunk(6, dim=-1)
        h = self.norm1(x) if mod is None else modulate(self.norm1(x), mod[0], mod[1])
        qkv = column_linear_sp(h, self.wqkv, self.group)  # [B, T*S, (h + 2 hkv) D]
        B = qkv.shape[0]
        qkv = qkv.view(B, frames, spatial, -1)
        if temporal:
            qkv = qkv.transpose(1, 2)  # sequences over T for each (b, s)
        seq = qkv.reshape(-1, qkv.shape[2], qkv.shape[3])
        q, k, v = seq.split([self.heads * hd, self.kv_heads * hd, self.kv_heads * hd], -1)
        q, k, v = (t.reshape(*t.shape[:2], -1, hd) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            cos, sin = rope_cos_sin(torch.arange(q.shape[1], device=q.device), hd, c.rope_theta, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = attention(q, k, v, False).reshape(*qkv.shape[:3], -1)
        if temporal:
            o = o.transpose(1, 2)
        a = reduce_scatter_seq(o.reshape(B, frames * spatial, -1) @ self.wo.t(), self.group)
        x = x + (a if mod is None else gated(mod[2], a))
        h = self.norm2(x) if mod is None else modulate(self.norm2(x), mod[3], mod[4])
        f = reduce_scatter_seq(
            F.gelu(column_linear_sp(h, self.fc1, self.group), approximate="tanh") @ self.fc2.t(), self.group
        )
        return x + (f if mod is None else gated(mod[5], f))

    def replicated_params(self) -> list[nn.Parameter]:
        return [
            p
            for name in self.REPLICATED
            if getattr(self, name) is not None
            for p in getattr(self, name).parameters()
        ]

    def full_grads(self, prefix: str) -> dict[str, torch.Tensor]:
        hd, g = self.cfg.head_dim, self.group
        gq, gk, gv = self.wqkv.grad.split([self.heads * hd, self.kv_heads * hd, self.kv_heads * hd], 0)
        grads = {}
        for name in self.REPLICATED:
            where = f"{prefix}.attn.{name}" if name in ("q_norm", "k_norm") else f"{prefix}.{name}"
            if getattr(self, name) is not None:
                grads.update({f"{where}.{k}": p.grad for k, p in getattr(self, name).named_parameters()})
        grads.update(
            {
                f"{prefix}.attn.wq.weight": all_gather_dim(gq, 0, g),
                f"{prefix}.attn.wk.weight": all_gather_dim(gk, 0, g),
                f"{prefix}.attn.wv.weight": all_gather_dim(gv, 0, g),
                f"{prefix}.attn.wo.weight": all_gather_dim(self.wo.grad, 1, g),
                f"{prefix}.mlp.fc1.weight": all_gather_dim(self.fc1.grad, 0, g),
                f"{prefix}.mlp.fc2.weight": all_gather_dim(self.fc2.grad, 1, g),
            }
        )
        return grads


class TPVideoModel(nn.Module):
    def __init__(
        self, reference: nn.Module, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "spatial": TPVideoBlock(layer.spatial, group, dtype, device),
                    "temporal": TPVideoBlock(layer.temporal, group, dtype, device),
                }
            )
            for layer in reference.blocks
        )
        self.frames, self.spatial, self.group = reference.frames, reference.spatial, group
        cond = reference.cond
        self.register_buffer("cond", None if cond is None else cond.to(device).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cond = conditioning(self.cond, x.dtype)
        for layer in self.layers:
            x = layer["spatial"](x, self.frames, self.spatial, False, cond)
            x = layer["temporal"](x, self.frames, self.spatial, True, cond)
        return x

    def finish_grads(self) -> None:
        sum_grads(
            [p for layer in self.layers for b in layer.values() for p in b.replicated_params()], self.group
        )

    def full_grads(self) -> dict[str, torch.Tensor]:
        grads = {}
        for i, layer in enumerate(self.layers):
            for stage, block in layer.items():
                grads.update(block.full_grads(f"blocks.{i}.{stage}"))
        return grads
