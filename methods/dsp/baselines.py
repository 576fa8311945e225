"""Embedded sequence parallelism on the spatial-temporal block, as the DSP paper compares it: the
flattened sequence is sharded over frames, spatial blocks are local (whole frames), and only the
temporal attention communicates, through Ulysses or Ring; Megatron-SP (TP-SP) communicates around
every attention and MLP. Registered as the `video` variants of ulysses, ring and tp_sp."""
from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from methods import Method, register
from methods.common import layout as layouts
from methods.common.attention import attention
from methods.common.collectives import all_gather_dim, heads_to_seq, reduce_scatter_seq, seq_to_heads, sum_grads
from methods.common.config import InvalidConfig, Problem
from methods.common.cost import CommCost
from methods.common.layers import apply_rope, copy_to, local_core, rope_cos_sin
from methods.common.memory import (MemCost, gelu_mlp_act, softmax_core_act, video_block_act, video_memory,
                                   video_rope_positions)
from methods.common.replicated import param_sync_cost
from methods.common.video import spatial_stage, temporal_stage, video_layer_shapes
from methods.ring import attention_act as ring_act
from methods.ring import attention_cost as ring_cost
from methods.ring import RingOptions, ring_attention
from methods.common.sharding import cols, local_param, rows
from methods.tp_sp import column_linear_sp
from methods.ulysses import attention_act as ulysses_act
from methods.ulysses import attention_cost as ulysses_cost
from methods.ulysses import UlyssesOptions, ulysses_attention
from methods.common.attention_call import AttentionCall, check_heads

from . import DSPModel, check_video, replicated_weights


class FrameShardModel(DSPModel):
    """Frames sharded ([B, T/N, S, C]); temporal attention through `core`; spatial attention local,
    or through `spatial_core` (Ulysses on every attention)."""

    def __init__(self, reference: nn.Module, core, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device,
                 spatial_core=local_core):
        super().__init__(reference, group, dtype, device)
        self.core, self.spatial_core = core, spatial_core

    def forward(self, x_local: torch.Tensor) -> torch.Tensor:
        m, n, r = self.model, dist.get_world_size(self.group), dist.get_rank(self.group)
        B, _, C = x_local.shape
        x = x_local.view(B, m.frames // n, m.spatial, C)
        frames = torch.arange(r * m.frames // n, (r + 1) * m.frames // n, device=x.device)  # global, for RoPE
        for layer in m.blocks:
            x = temporal_stage(layer.temporal, spatial_stage(layer.spatial, x, self.spatial_core), frames, self.core)
        return x.reshape(B, -1, C)


def spatial_ulysses(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, local, group: dist.ProcessGroup,
                    frames_local: int) -> torch.Tensor:
    """Ulysses for the spatial attention of frame-sharded activations, done right: scatter heads and
    gather the sharded dimension (T), attend over S in every frame, and exchange back.
    q/k/v [B*T/N, S, heads, D] -> out [B*T/N, S, H, D]."""
    batch, spatial = q.shape[0] // frames_local, q.shape[1]

    def frames_to_heads(t):  # [B*T/N, S, h, D] -> [B*T, S, h/N, D]
        t = t.view(batch, frames_local, spatial, *t.shape[2:]).transpose(1, 2).flatten(0, 1)  # [B*S, T/N, h, D]
        t = seq_to_heads(t, group)  # [B*S, T, h/N, D]
        return t.view(batch, spatial, *t.shape[1:]).transpose(1, 2).flatten(0, 1)

    o = local(*(frames_to_heads(t) for t in (q, k, v)), causal)  # [B*T, S, H/N, D]
    o = o.view(batch, -1, *o.shape[1:]).transpose(1, 2).flatten(0, 1)  # [B*S, T, H/N, D]
    o = heads_to_seq(o, group)  # [B*S, T/N, H, D]
    return o.view(batch, spatial, *o.shape[1:]).transpose(1, 2).reshape(q.shape)


@layouts.real_indices
def temporal_call(p: Problem) -> AttentionCall:
    """The temporal attention over the world: B*S sequences of T frames."""
    m, w = p.model, p.workload
    return AttentionCall(w.batch_size * w.spatial, w.frames, m.heads, m.kv_heads, m.head_dim, p.world_size,
                         p.torch_dtype, m.hidden, causal=False)


def frame_layout(p: Problem) -> list[torch.Tensor]:
    return layouts.contiguous(p.workload.frames * p.workload.spatial, p.world_size)


def check_frames(p: Problem) -> None:
    check_video(p)
    if p.workload.frames % p.world_size:
        raise InvalidConfig(f"workload.frames={p.workload.frames} is not divisible by world_size={p.world_size}: "
                            f"{p.method} shards the frames (DSP pads them instead)")


def frame_shard_memory(p: Problem, spatial_attention: int, temporal_attention: int) -> MemCost:
    """FrameShardModel on every rank ([B, T/N, S, C], replicated weights), given what one spatial and
    one temporal attention keep. Each block boundary leaves one [B, T/N, S, C] storage to the next
    norm (the previous output, or the copy the transposing reshape makes), the first block's being
    x itself; with the output that is two per layer. The temporal block ropes its T/N frames."""
    m, w, n = p.model, p.workload, p.world_size
    frames_local = w.frames // n
    tokens = w.batch_size * frames_local * w.spatial
    layer = (video_block_act(p, tokens, 0, spatial_attention)
             + video_block_act(p, tokens, video_rope_positions(p, frames_local), temporal_attention)
             + 2 * tokens * m.hidden * p.elem_bytes)
    return video_memory(p, replicated_weights(p), tokens, m.layers * layer)


def local_spatial_act(p: Problem) -> int:
    """The local kernel over the S tokens of each of the B*T/N frames held."""
    m, w = p.model, p.workload
    return softmax_core_act(w.batch_size * w.frames // p.world_size, w.spatial, m.heads, w.spatial, m.kv_heads,
                            m.head_dim, p.torch_dtype)


# ---- Ulysses on the temporal attention -------------------------------------------------------------

def video_attention(p: Problem) -> str:
    """temporal: Ulysses on the temporal attention only (the DSP paper's baseline); all: on the
    spatial attention too, as Open-Sora v1.0 applied it."""
    return p.options.video_attention


def ulysses_validate(p: Problem) -> None:
    check_frames(p)
    check_heads(p.model.heads, p.model.kv_heads, p.world_size, "Ulysses degree")
    if video_attention(p) == "all" and p.model.kv_heads < p.world_size:
        raise InvalidConfig("method.video_attention=all needs kv_heads >= world_size")


def ulysses_build(p: Problem, reference: nn.Module, device: torch.device) -> FrameShardModel:
    group = dist.group.WORLD
    spatial = local_core  # passed explicitly: None would select the reference math path
    if video_attention(p) == "all":
        spatial = partial(spatial_ulysses, group=group, frames_local=p.workload.frames // p.world_size)
    return FrameShardModel(reference, partial(ulysses_attention, group=group), group, p.torch_dtype, device, spatial)


def ulysses_video_cost(p: Problem) -> CommCost:
    m = p.model
    cost = CommCost()
    for _ in range(m.layers):  # sequences of T frames, one per (b, s); with `all` again for the spatial attention
        for _ in range(2 if video_attention(p) == "all" else 1):
            cost += ulysses_cost(temporal_call(p))
    return cost + param_sync_cost(p, video_layer_shapes(m), m.layers)


def spatial_ulysses_act(p: Problem) -> int:
    """`spatial_ulysses`: the local kernel keeps this rank's head group over the S tokens of all B*T
    frames, and Wo's input is the output exchanged back ([B*T/N, S, H*D]). On one rank nothing is
    exchanged and that input is the kernel's own output, unless the reshapes around the exchange
    copy it ([B, T, S] -> [B, S, T] is a view only when one of them is 1)."""
    m, w, n = p.model, p.workload, p.world_size
    B, T, S = w.batch_size, w.frames, w.spatial
    kernel = softmax_core_act(B * T, S, m.heads // n, S, m.kv_heads // n, m.head_dim, p.torch_dtype)
    copied = n > 1 or min(B, T, S) > 1
    return kernel + (B * T // n * S * m.heads * m.head_dim * p.elem_bytes if copied else 0)


def ulysses_memory(p: Problem) -> MemCost:
    """Ulysses on sequences of T frames, one per (b, s), as on the LLM block (methods/ulysses);
    with `all` the spatial attention too (`spatial_ulysses_act`)."""
    spatial = spatial_ulysses_act(p) if video_attention(p) == "all" else local_spatial_act(p)
    return frame_shard_memory(p, spatial, ulysses_act(temporal_call(p)))


# ---- Ring on the temporal attention ----------------------------------------------------------------

def ring_validate(p: Problem) -> None:
    check_frames(p)


def ring_build(p: Problem, reference: nn.Module, device: torch.device) -> FrameShardModel:
    group = dist.group.WORLD
    return FrameShardModel(reference, partial(ring_attention, group=group, layout="basic"), group, p.torch_dtype, device)


def ring_video_cost(p: Problem) -> CommCost:
    m = p.model
    cost = CommCost()
    for _ in range(m.layers):
        cost += ring_cost(temporal_call(p))
    return cost + param_sync_cost(p, video_layer_shapes(m), m.layers)


def ring_memory(p: Problem) -> MemCost:
    """Ring attention on sequences of T frames, one per (b, s), each rank holding T/N of them."""
    temporal = ring_act(temporal_call(p))
    return frame_shard_memory(p, local_spatial_act(p), temporal)


# ---- Megatron-SP (TP-SP) on both blocks ------------------------------------------------------------

class TPVideoBlock(nn.Module):
    """One spatial or temporal block with Megatron TP-SP: the flattened token shard is gathered
    before the QKV / fc1 column linears and reduce-scattered after Wo / fc2."""

    def __init__(self, ref: nn.Module, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device):
        super().__init__()
        c, n, r = ref.attn.cfg, dist.get_world_size(group), dist.get_rank(group)
        self.cfg, self.group, self.use_rope = c, group, ref.attn.use_rope
        self.heads, self.kv_heads = c.heads // n, c.kv_heads // n
        self.norm1 = copy_to(ref.norm1, device, dtype)  # replicated
        self.norm2 = copy_to(ref.norm2, device, dtype)
        a = ref.attn
        self.wqkv = local_param(torch.cat([rows(a.wq.weight, r, n), rows(a.wk.weight, r, n), rows(a.wv.weight, r, n)]), dtype, device)
        self.wo = local_param(cols(a.wo.weight, r, n), dtype, device)
        self.fc1 = local_param(rows(ref.mlp.fc1.weight, r, n), dtype, device)
        self.fc2 = local_param(cols(ref.mlp.fc2.weight, r, n), dtype, device)

    def forward(self, x: torch.Tensor, frames: int, spatial: int, temporal: bool) -> torch.Tensor:
        c, hd = self.cfg, self.cfg.head_dim
        qkv = column_linear_sp(self.norm1(x), self.wqkv, self.group)  # [B, T*S, (h + 2 hkv) D]
        B = qkv.shape[0]
        qkv = qkv.view(B, frames, spatial, -1)
        if temporal:
            qkv = qkv.transpose(1, 2)  # sequences over T for each (b, s)
        seq = qkv.reshape(-1, qkv.shape[2], qkv.shape[3])
        q, k, v = seq.split([self.heads * hd, self.kv_heads * hd, self.kv_heads * hd], -1)
        q, k, v = (t.reshape(*t.shape[:2], -1, hd) for t in (q, k, v))
        if self.use_rope:
            cos, sin = rope_cos_sin(torch.arange(q.shape[1], device=q.device), hd, c.rope_theta, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = attention(q, k, v, False).reshape(*qkv.shape[:3], -1)
        if temporal:
            o = o.transpose(1, 2)
        x = x + reduce_scatter_seq(o.reshape(B, frames * spatial, -1) @ self.wo.t(), self.group)
        h = F.gelu(column_linear_sp(self.norm2(x), self.fc1, self.group), approximate="tanh")
        return x + reduce_scatter_seq(h @ self.fc2.t(), self.group)

    def norm_params(self) -> list[nn.Parameter]:
        return [*self.norm1.parameters(), *self.norm2.parameters()]

    def full_grads(self, prefix: str) -> dict[str, torch.Tensor]:
        hd, g = self.cfg.head_dim, self.group
        gq, gk, gv = self.wqkv.grad.split([self.heads * hd, self.kv_heads * hd, self.kv_heads * hd], 0)
        grads = {f"{prefix}.norm1.{k}": p.grad for k, p in self.norm1.named_parameters()}
        grads.update({f"{prefix}.norm2.{k}": p.grad for k, p in self.norm2.named_parameters()})
        grads.update({f"{prefix}.attn.wq.weight": all_gather_dim(gq, 0, g), f"{prefix}.attn.wk.weight": all_gather_dim(gk, 0, g),
                      f"{prefix}.attn.wv.weight": all_gather_dim(gv, 0, g),
                      f"{prefix}.attn.wo.weight": all_gather_dim(self.wo.grad, 1, g),
                      f"{prefix}.mlp.fc1.weight": all_gather_dim(self.fc1.grad, 0, g),
                      f"{prefix}.mlp.fc2.weight": all_gather_dim(self.fc2.grad, 1, g)})
        return grads


class TPVideoModel(nn.Module):
    def __init__(self, reference: nn.Module, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"spatial": TPVideoBlock(layer.spatial, group, dtype, device),
                                                   "temporal": TPVideoBlock(layer.temporal, group, dtype, device)})
                                    for layer in reference.blocks)
        self.frames, self.spatial, self.group = reference.frames, reference.spatial, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer["spatial"](x, self.frames, self.spatial, temporal=False)
            x = layer["temporal"](x, self.frames, self.spatial, temporal=True)
        return x

    def finish_grads(self) -> None:
        sum_grads([p for layer in self.layers for b in layer.values() for p in b.norm_params()], self.group)

    def full_grads(self) -> dict[str, torch.Tensor]:
        grads = {}
        for i, layer in enumerate(self.layers):
            for stage, block in layer.items():
                grads.update(block.full_grads(f"blocks.{i}.{stage}"))
        return grads


def tp_validate(p: Problem) -> None:
    check_video(p)
    m, n = p.model, p.world_size
    for name, value in (("heads", m.heads), ("kv_heads", m.kv_heads), ("ffn_hidden", m.ffn_hidden),
                        ("frames x spatial", p.workload.frames * p.workload.spatial)):
        if value % n:
            raise InvalidConfig(f"{name}={value} is not divisible by the TP degree {n}")


def tp_build(p: Problem, reference: nn.Module, device: torch.device) -> TPVideoModel:
    return TPVideoModel(reference, dist.group.WORLD, p.torch_dtype, device)


def tp_video_cost(p: Problem) -> CommCost:
    """Per block (2 per layer): AG + RS around attention and MLP forward; backward the g-bar
    all-gathers, the re-gathers and the dx reduce-scatters; then the LayerNorm gradients."""
    m, w, n, e = p.model, p.workload, p.world_size, p.elem_bytes
    activation = w.batch_size * w.frames * w.spatial * m.hidden * e  # M * element size
    blocks = 2 * m.layers
    cost = (CommCost().add("fwd", "all_gather", activation, n, times=2 * blocks)
            .add("fwd", "reduce_scatter", activation, n, times=2 * blocks)
            .add("bwd", "all_gather", activation, n, times=4 * blocks)
            .add("bwd", "reduce_scatter", activation, n, times=2 * blocks))
    return cost.add("bwd", "all_reduce", blocks * 4 * m.hidden * e, n)  # 2 LayerNorms x (weight, bias)


def tp_attention_act(p: Problem, temporal: bool) -> int:
    """One TPVideoBlock attention on this rank's heads over all B*T*S tokens: the packed QKV output
    (or the copy the temporal transpose makes), which v, a view of it, keeps whole (q and k too
    without RoPE); with RoPE the rotated q and k; the kernel's output and LSE. Wo's input is the
    output itself, except in the temporal block where [B, S, T] back to [B, T*S] copies it unless S
    or T is 1, or B is 1 without RoPE: the QKV transpose is then a view, so q is laid out t-major,
    and the CPU kernel (real and fake alike) lays its output out like q."""
    m, w, n, e = p.model, p.workload, p.world_size, p.elem_bytes
    B, T, S = w.batch_size, w.frames, w.spatial
    heads, kv_heads, hd = m.heads // n, m.kv_heads // n, m.head_dim
    tokens = B * T * S
    batch, length = (B * S, T) if temporal else (B * T, S)
    rope = temporal and video_rope_positions(p, T) > 0
    views = (kv_heads if rope else heads + 2 * kv_heads) * tokens * hd * e  # q, k, v inside the QKV output
    wo_input = tokens * heads * hd * e if temporal and min(T, S) > 1 and (rope or B > 1) else 0
    return ((heads + 2 * kv_heads) * tokens * hd * e - views + wo_input
            + softmax_core_act(batch, length, heads, length, kv_heads, hd, p.torch_dtype))


def tp_memory(p: Problem) -> MemCost:
    """TP-SP on the flattened t-major sequence: norms, residuals and the column linears' saved inputs
    on the rank's B*T*S/N rows, attention and MLP over all tokens for 1/N of the heads and channels.
    Each block's input is the previous one's output (the first: x), so the stream adds two
    [B, T*S/N, C] storages per layer, the output included."""
    m, w, n, e = p.model, p.workload, p.world_size, p.elem_bytes
    d, tokens = m.hidden, w.batch_size * w.frames * w.spatial
    attention_params = (m.heads + 2 * m.kv_heads) // n * m.head_dim * d + d * m.heads // n * m.head_dim
    block_params = 4 * d + attention_params + 2 * m.ffn_hidden // n * d  # two LayerNorms (weight, bias)
    mlp = gelu_mlp_act(tokens, m.ffn_hidden // n, e)
    layer = sum(video_block_act(p, tokens // n, video_rope_positions(p, w.frames) if temporal else 0,
                                tp_attention_act(p, temporal), mlp) for temporal in (False, True))
    act = m.layers * (layer + 2 * tokens // n * d * e)
    return video_memory(p, 2 * m.layers * block_params * e, tokens // n, act)


VIDEO = {"workloads": ("video",), "model_kinds": ("video",)}
register(Method("ulysses", validate=ulysses_validate, layout=frame_layout, build=ulysses_build,
                comm_cost=ulysses_video_cost, memory_cost=ulysses_memory, options=UlyssesOptions, **VIDEO))
register(Method("ring", validate=ring_validate, layout=frame_layout, build=ring_build, comm_cost=ring_video_cost,
                memory_cost=ring_memory, options=RingOptions, **VIDEO))
register(Method("tp_sp", validate=tp_validate, layout=frame_layout, build=tp_build, comm_cost=tp_video_cost,
                memory_cost=tp_memory, **VIDEO))
