"""The DSP paper's benchmark block (arXiv 2403.10266): OpenSora-style spatial-temporal layers without
cross-attention. Each layer is a spatial block (LayerNorm, self-attention over the S tokens of each
frame, LayerNorm, GELU MLP) and then a temporal block (the same over the T frames of each spatial
position, optionally with RoPE over T). Activations are [B, T, S, C]; the harness feeds [B, T*S, C]
flattened t-major.

The model options (`VideoOptions`) follow OpenSora's STDiT/STDiT3 (hpcaitech/Open-Sora
opensora/models/stdit/) and DiT (facebookresearch/DiT models.py) where they choose:
- LayerNorms without affine weights at eps 1e-6 (`norm_affine: false`, `norm_eps: 1e-6` in the model
  files; `norm_affine: true` gives torch's default affine LayerNorm);
- `adaln`: adaLN-Zero as in DiT's block: SiLU(c) -> Linear(C, 6C) -> shift, scale and gate for the
  attention and for the MLP, x + gate * f(LN(x) * (1 + scale) + shift). Per block, as DiT; OpenSora
  shares one such linear over the blocks and adds a learned [6, C] table per block (adaLN-single).
  The conditioning vector c (DiT: the timestep and class embeddings) is a fixed input per sample: a
  seeded [B, C] buffer of the model, replicated on every rank like the weights. DiT zero-initialises
  the linear (the "Zero"); here it is initialised like every other weight, because a zero gate would
  zero the attention and MLP gradients that the exactness checks compare;
- `qk_norm`: an RMSNorm (weight, eps = norm_eps) over each head's channels of q and of k, before
  RoPE, as STDiT3's attention applies it.
The modulation is per sample and the same for any sequence sharding, so it needs no communication;
its weight gradients are summed over the ranks like every other replicated weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import InvalidConfig, ModelConfig, Problem, Workload
from .layers import Attention, AttentionCore


@dataclass(frozen=True)
class VideoOptions:
    """A video model's options (`model.*` keys beside the shape); the defaults live here."""

    temporal_rope: bool = True
    norm_affine: bool = False
    adaln: bool = False
    qk_norm: bool = False


def video_options(cfg: ModelConfig) -> VideoOptions:
    given = {k: cfg.extra[k] for k in VideoOptions.__dataclass_fields__ if k in cfg.extra}
    return VideoOptions(**{k: bool(v) for k, v in given.items()})


def video_shape(p: Problem) -> tuple[int, int, int]:
    """(B, T, S) of a video problem."""
    w = p.workload
    return w.batch_size, w.frames, w.spatial


def check_video(p: Problem) -> None:
    """Every video method's first check: a video workload has frames and spatial tokens."""
    if p.workload.frames < 1 or p.workload.spatial < 1:
        raise InvalidConfig(
            f"the video workload needs frames >= 1 and spatial >= 1, got "
            f"frames={p.workload.frames} spatial={p.workload.spatial}"
        )


class GeluMLP(nn.Module):
    def __init__(self, hidden: int, ffn_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, ffn_hidden, bias=False)
        self.fc2 = nn.Linear(ffn_hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _per_sample(h: torch.Tensor, batch: int) -> torch.Tensor:
    """h [B*R, L, C] (rows sample-major, as every stage folds them) as [B, R, L, C], a view."""
    return h.view(batch, -1, *h.shape[1:])


def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """h * (1 + scale) + shift with shift/scale [B, C] broadcast over each sample's rows and tokens."""
    hv = _per_sample(h, shift.shape[0])
    return (hv * (1 + scale[:, None, None]) + shift[:, None, None]).view(h.shape)


def gated(gate: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return (gate[:, None, None] * _per_sample(h, gate.shape[0])).view(h.shape)


class VideoBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: bool):
        super().__init__()
        opts = video_options(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps, elementwise_affine=opts.norm_affine)
        self.attn = Attention(cfg, qk_norm=opts.qk_norm)
        self.attn.use_rope = rope
        self.norm2 = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps, elementwise_affine=opts.norm_affine)
        self.mlp = GeluMLP(cfg.hidden, cfg.ffn_hidden)
        self.modulation = nn.Linear(cfg.hidden, 6 * cfg.hidden) if opts.adaln else None

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        core: AttentionCore | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B*R, L, C]: R sequences of L tokens for each of the B samples; `cond` the model's
        SiLU(c) [B, C] when the block modulates."""
        if self.modulation is None:
            x = x + self.attn(self.norm1(x), positions, False, core)
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).chunk(6, dim=-1)
        x = x + gated(gate1, self.attn(modulate(self.norm1(x), shift1, scale1), positions, False, core))
        return x + gated(gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))


class VideoLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.spatial = VideoBlock(cfg, rope=False)
        self.temporal = VideoBlock(cfg, rope=video_options(cfg).temporal_rope)


def spatial_stage(
    block: VideoBlock, x: torch.Tensor, core: AttentionCore | None = None, cond: torch.Tensor | None = None
) -> torch.Tensor:
    """x [B, T', S, C] with whole frames: attention over S for each (b, t)."""
    B, T, S, C = x.shape
    return block(x.reshape(B * T, S, C), torch.arange(S, device=x.device), core, cond).view(B, T, S, C)


def temporal_stage(
    block: VideoBlock,
    x: torch.Tensor,
    frame_positions: torch.Tensor,
    core: AttentionCore | None = None,
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [B, T', S', C]: attention over the frames for each (b, s); `frame_positions` are the global
    indices of the T' frames held (RoPE), the whole T unless `core` spans ranks."""
    B, T, S, C = x.shape
    h = block(x.transpose(1, 2).reshape(B * S, T, C), frame_positions, core, cond)
    return h.view(B, S, T, C).transpose(1, 2)


def conditioning(cond: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """SiLU(c) [B, C] in the compute dtype from a model's `cond` buffer: the input of every block's
    modulation (None without adaLN)."""
    return None if cond is None else F.silu(cond.to(dtype))


class VideoModel(nn.Module):
    """The single-device reference: [B, T*S, C] in and out."""

    cond: torch.Tensor | None  # a buffer (None without adaLN)

    def __init__(self, cfg: ModelConfig, workload: Workload, seed: int = 0):
        super().__init__()
        self.blocks = nn.ModuleList(VideoLayer(cfg) for _ in range(cfg.layers))
        self.frames, self.spatial = workload.frames, workload.spatial
        cond = None
        if video_options(cfg).adaln:  # float64 like the weights' source; its own stream of the seed
            gen = torch.Generator().manual_seed(seed + 1)
            cond = torch.randn(
                workload.batch_size, cfg.hidden, generator=gen, dtype=torch.float64, device="cpu"
            )
        self.register_buffer("cond", cond, persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        positions: torch.Tensor | None = None,
        core: AttentionCore | None = None,
    ) -> torch.Tensor:
        B, _, C = x.shape
        x = x.view(B, self.frames, self.spatial, C)
        frames = torch.arange(self.frames, device=x.device)
        cond = conditioning(self.cond, x.dtype)
        for layer in self.blocks:
            assert isinstance(layer, VideoLayer)
            x = temporal_stage(layer.temporal, spatial_stage(layer.spatial, x, cond=cond), frames, cond=cond)
        return x.reshape(B, -1, C)


def video_block_shapes(m: ModelConfig) -> list[tuple[int, ...]]:
    """Parameter shapes of one VideoBlock, in registration order."""
    opts = video_options(m)
    d, q, kv, hd = m.hidden, m.heads * m.head_dim, m.kv_heads * m.head_dim, m.head_dim
    norm = [(d,), (d,)] if opts.norm_affine else []
    qk = [(hd,), (hd,)] if opts.qk_norm else []
    modulation = [(6 * d, d), (6 * d,)] if opts.adaln else []
    return [
        *norm,
        (q, d),
        (kv, d),
        (kv, d),
        (d, q),
        *qk,
        *norm,
        (m.ffn_hidden, d),
        (d, m.ffn_hidden),
        *modulation,
    ]


def video_layer_shapes(m: ModelConfig) -> list[tuple[int, ...]]:
    """Parameter shapes of one video layer (spatial block then temporal block), in registration order."""
    return 2 * video_block_shapes(m)
