"""The DSP paper's benchmark block (arXiv 2403.10266): OpenSora-style spatial-temporal layers without
cross-attention. Each layer is a spatial block (LayerNorm, self-attention over the S tokens of each
frame, LayerNorm, GELU MLP) and then a temporal block (the same over the T frames of each spatial
position, optionally with RoPE over T). Activations are [B, T, S, C]; the harness feeds [B, T*S, C]
flattened t-major."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import Attention, AttentionCore


class GeluMLP(nn.Module):
    def __init__(self, hidden: int, ffn_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, ffn_hidden, bias=False)
        self.fc2 = nn.Linear(ffn_hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class VideoBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden)
        self.attn = Attention(cfg)
        self.attn.use_rope = rope
        self.norm2 = nn.LayerNorm(cfg.hidden)
        self.mlp = GeluMLP(cfg.hidden, cfg.ffn_hidden)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, core: AttentionCore | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), positions, False, core)
        return x + self.mlp(self.norm2(x))


class VideoLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.spatial = VideoBlock(cfg, rope=False)
        self.temporal = VideoBlock(cfg, rope=bool(cfg.extra.get("temporal_rope", True)))


def spatial_stage(block: VideoBlock, x: torch.Tensor, core: AttentionCore | None = None) -> torch.Tensor:
    """x [B, T', S, C] with whole frames: attention over S for each (b, t)."""
    B, T, S, C = x.shape
    return block(x.reshape(B * T, S, C), torch.arange(S, device=x.device), core).view(B, T, S, C)


def temporal_stage(block: VideoBlock, x: torch.Tensor, frame_positions: torch.Tensor,
                   core: AttentionCore | None = None) -> torch.Tensor:
    """x [B, T', S', C]: attention over the frames for each (b, s); `frame_positions` are the global
    indices of the T' frames held (RoPE), the whole T unless `core` spans ranks."""
    B, T, S, C = x.shape
    h = block(x.transpose(1, 2).reshape(B * S, T, C), frame_positions, core)
    return h.view(B, S, T, C).transpose(1, 2)


class VideoModel(nn.Module):
    """The single-device reference: [B, T*S, C] in and out."""

    def __init__(self, cfg: ModelConfig, frames: int, spatial: int):
        super().__init__()
        self.blocks = nn.ModuleList(VideoLayer(cfg) for _ in range(cfg.layers))
        self.frames, self.spatial = frames, spatial

    def forward(self, x: torch.Tensor, causal: bool = False, positions: torch.Tensor | None = None,
                core: AttentionCore | None = None) -> torch.Tensor:
        B, _, C = x.shape
        x = x.view(B, self.frames, self.spatial, C)
        frames = torch.arange(self.frames, device=x.device)
        for layer in self.blocks:
            x = temporal_stage(layer.temporal, spatial_stage(layer.spatial, x), frames)
        return x.reshape(B, -1, C)


def video_layer_shapes(m: ModelConfig) -> list[tuple[int, ...]]:
    """Parameter shapes of one video layer (spatial block then temporal block), in registration order."""
    d, q, kv = m.hidden, m.heads * m.head_dim, m.kv_heads * m.head_dim
    block = [(d,), (d,), (q, d), (kv, d), (kv, d), (d, q), (d,), (d,), (m.ffn_hidden, d), (d, m.ffn_hidden)]
    return block + block
