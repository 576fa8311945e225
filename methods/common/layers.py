"""Single-device reference layers and the Llama block every LLM method is checked against.

The reference is deliberately plain: float64-capable math attention, no fused kernels, so that a
parallel block that matches it is right, not merely consistent with itself.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .config import ModelConfig, Workload
from .linear_attention import LinearKernel, model_decays, naive_linear_attention

LocalAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]
# A distributed core gets this rank's q, k, v [B, L_local, heads, D] (RoPE applied with the tokens'
# global positions) and the layer's fast single-device kernel, and returns this rank's output rows.
AttentionCore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, LocalAttention], torch.Tensor]


def local_core(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, local: LocalAttention
) -> torch.Tensor:
    """The core of a rank that holds every token its attention needs: the layer's fast kernel (the
    reference path, taken when no core is given, is the plain math one)."""
    return local(q, k, v, causal)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 (or float64) so bf16 runs match a same-dtype reference.
        xf = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [L, head_dim/2] for the given global token positions (any order)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    )
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x [B, L, heads, D] by the position angles."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, ffn_hidden: int):
        super().__init__()
        self.w1 = nn.Linear(hidden, ffn_hidden, bias=False)  # gate
        self.w3 = nn.Linear(hidden, ffn_hidden, bias=False)  # up
        self.w2 = nn.Linear(ffn_hidden, hidden, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Reference softmax attention on [B, L, H, D] / [B, L, Hkv, D]; GQA by repeating kv heads."""
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        L = q.shape[1]
        mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


class Attention(nn.Module):
    # single-device kernels: the plain float64-capable reference, and the fast one (LSE kernels) that
    # parallel methods run on their local piece of the problem
    reference_attention = staticmethod(math_attention)
    use_rope = True

    @property
    def local_attention(self) -> Callable[..., torch.Tensor]:
        return attention

    def __init__(self, cfg: ModelConfig, qk_norm: bool = False):
        super().__init__()
        self.cfg = cfg
        self.wq = nn.Linear(cfg.hidden, cfg.heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.heads * cfg.head_dim, cfg.hidden, bias=False)
        # qk-norm (OpenSora STDiT3): an RMSNorm over each head's D channels of q and of k, before RoPE
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if qk_norm else None

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, causal: bool, core: AttentionCore | None = None
    ) -> torch.Tensor:
        """Without `core` this is the single-device reference; sequence-parallel methods pass a
        distributed core and keep everything else (norms, projections, RoPE, MLP) as it is."""
        B, L, _ = x.shape
        c = self.cfg
        q = self.wq(x).view(B, L, c.heads, c.head_dim)
        k = self.wk(x).view(B, L, c.kv_heads, c.head_dim)
        v = self.wv(x).view(B, L, c.kv_heads, c.head_dim)
        if self.q_norm is not None and self.k_norm is not None:  # both or neither
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta, x.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = core(q, k, v, causal, self.local_attention) if core else self.reference_attention(q, k, v, causal)
        return self.wo(o.reshape(B, L, -1))


class LlamaBlock(nn.Module):
    """Pre-norm Llama block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.hidden, cfg.ffn_hidden)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, causal: bool, core: AttentionCore | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), positions, causal, core)
        return x + self.mlp(self.mlp_norm(x))


class ReferenceModel(nn.Module):
    """`layers` stacked blocks on one device; the source of every method's weights."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool,
        positions: torch.Tensor | None = None,
        core: AttentionCore | None = None,
    ) -> torch.Tensor:
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device)
        for block in self.blocks:
            x = block(x, positions, causal, core)
        return x


def init_weights_(model: nn.Module, seed: int) -> nn.Module:
    """Deterministic weights from a seed: linears ~ N(0, 1/fan_in), norm weights ~ 1 + N(0, 0.1)
    (not all ones, so a wrongly reduced norm gradient cannot hide)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64, device="cpu"))
            else:
                p.copy_(
                    torch.randn(p.shape, generator=gen, dtype=torch.float64, device="cpu")
                    / math.sqrt(p.shape[-1])
                )
    return model


def llama_block_shapes(m: ModelConfig) -> list[tuple[int, ...]]:
    """Parameter shapes of one Llama block, in registration order."""
    d, q, kv = m.hidden, m.heads * m.head_dim, m.kv_heads * m.head_dim
    return [
        (d,),
        (q, d),
        (kv, d),
        (kv, d),
        (d, q),
        (d,),
        (m.ffn_hidden, d),
        (m.ffn_hidden, d),
        (d, m.ffn_hidden),
    ]


def llama_block_params(m: ModelConfig) -> int:
    """Parameters of one Llama block: two norms, q/k/v/o projections, SwiGLU."""
    return sum(math.prod(s) for s in llama_block_shapes(m))


class LinearAttentionLayer(Attention):
    """Linear-Llama3: the Llama attention with softmax replaced by basic linear attention (per-head
    decay when the model sets `decay: true`, from the table its `decay_rule` names); projections, RoPE
    and everything around stay."""

    decay: torch.Tensor | None  # a buffer (None without decay)

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        # a buffer, so that it moves with the model to the device of the data, once; float64 kept
        self.register_buffer("decay", model_decays(cfg), persistent=False)

    def reference_attention(self, q, k, v, causal: bool) -> torch.Tensor:
        return naive_linear_attention(q, k, v, causal, self.decay)

    @property
    def local_attention(self) -> LinearKernel:
        return LinearKernel(self.decay)


def linear_block(cfg: ModelConfig) -> LlamaBlock:
    block = LlamaBlock(cfg)
    block.attn = LinearAttentionLayer(cfg)
    return block


def is_softmax_layer(cfg: ModelConfig, index: int) -> bool:
    """Hybrid stacks put a softmax layer at every `hybrid_period`-th layer (LASP-2's 1/4 hybrid: LLLN)."""
    return cfg.kind == "llama" or (
        cfg.kind == "hybrid" and (index + 1) % cfg.extra.get("hybrid_period", 4) == 0
    )


# model kind -> builder of layer `index`
BLOCK_BUILDERS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "llama": lambda cfg, i: LlamaBlock(cfg),
    "linear": lambda cfg, i: linear_block(cfg),
    "hybrid": lambda cfg, i: LlamaBlock(cfg) if is_softmax_layer(cfg, i) else linear_block(cfg),
}


def build_reference(
    cfg: ModelConfig,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    workload: Workload | None = None,
) -> nn.Module:
    """The single-device reference stack for `cfg.kind`, identical on every rank for a given seed
    (video models take their frame and spatial sizes from the workload)."""
    if cfg.kind not in BLOCK_BUILDERS and cfg.kind != "video":
        raise KeyError(f"no reference block registered for model kind {cfg.kind!r}")
    with torch.device("cpu"):  # weights come from a CPU generator, whatever the default device is
        if cfg.kind == "video":
            from .video import VideoModel

            assert workload is not None, "a video model takes its frame and spatial sizes from the workload"
            model: nn.Module = VideoModel(cfg, workload, seed)
        else:
            model = ReferenceModel([BLOCK_BUILDERS[cfg.kind](cfg, i) for i in range(cfg.layers)])
        init_weights_(to_(model, dtype=torch.float64), seed)
    return to_(model, device, dtype)


def to_(
    module: nn.Module, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> nn.Module:
    """`module.to(device, dtype)` by rebinding each parameter and buffer (floating parameters take
    `dtype`; buffers keep theirs: a float64 decay stays exact), in place. Module.to() swaps tensors in
    place, which fake tensors (mode=dryrun) refuse."""
    for mod in module.modules():
        for name, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]:
            cast = dtype if isinstance(t, nn.Parameter) and t.is_floating_point() else None
            new = t.detach().to(device=device, dtype=cast)
            setattr(mod, name, nn.Parameter(new, t.requires_grad) if isinstance(t, nn.Parameter) else new)
    return module


def copy_to(module: nn.Module, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """A deep copy of `module` on `device` in `dtype` (see `to_`)."""
    return to_(copy.deepcopy(module), device, dtype)
