"""Differentiable collectives shared by the methods. Each forward collective's backward is its
conjugate (all-to-all <-> inverse all-to-all, all-gather <-> reduce-scatter), so a method's backward
traffic follows from its forward by construction."""

from __future__ import annotations

import torch
import torch.distributed as dist

# torch >= 2.13 names them *_single; the *_tensor spellings remain (deprecated) for older releases
_all_gather = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)
_reduce_scatter = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)


def group_size(group: dist.ProcessGroup | None) -> int:
    return dist.get_world_size(group)


# ---- sequence <-> head all-to-all (Ulysses) -------------------------------------------------------


def _seq_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """[B, L/N, H, D] (all heads, a sequence shard) -> [B, L, H/N, D] (a head group, all tokens)."""
    n = group_size(group)
    if n == 1:
        return x
    B, Lc, H, D = x.shape
    send = x.reshape(B, Lc, n, H // n, D).permute(2, 1, 0, 3, 4).contiguous()  # [N, L/N, B, H/N, D]
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # slot i now holds source rank i's sequence chunk
    return recv.reshape(n * Lc, B, H // n, D).transpose(0, 1).contiguous()


def _heads_to_seq(x: torch.Tensor, group) -> torch.Tensor:
    """[B, L, H/N, D] -> [B, L/N, H, D]; the inverse of `_seq_to_heads`."""
    n = group_size(group)
    if n == 1:
        return x
    B, L, Hc, D = x.shape
    send = x.reshape(B, n, L // n, Hc, D).permute(1, 3, 2, 0, 4).contiguous()  # [N, H/N, L/N, B, D]
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # slot i holds head group i for my tokens
    return recv.reshape(n * Hc, L // n, B, D).permute(2, 1, 0, 3).contiguous()


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _seq_to_heads(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _heads_to_seq(grad, ctx.group), None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _heads_to_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _seq_to_heads(grad, ctx.group), None


def seq_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _SeqToHeads.apply(x, group)


def heads_to_seq(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _HeadsToSeq.apply(x, group)


# ---- all-gather / reduce-scatter along a dimension ------------------------------------------------


def all_gather_dim(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Concatenate every rank's x along `dim`, in group-rank order (one all-gather of n*x bytes)."""
    n = group_size(group)
    if n == 1:
        return x
    moved = x.movedim(dim, 0).contiguous()
    out = torch.empty((n * moved.shape[0], *moved.shape[1:]), dtype=x.dtype, device=x.device)
    _all_gather(out, moved, group=group)
    return out.movedim(0, dim).contiguous()


def reduce_scatter_dim(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Sum x over ranks and keep this rank's 1/n slice of `dim` (one reduce-scatter of x's bytes)."""
    n = group_size(group)
    if n == 1:
        return x
    moved = x.movedim(dim, 0).contiguous()
    out = torch.empty((moved.shape[0] // n, *moved.shape[1:]), dtype=x.dtype, device=x.device)
    _reduce_scatter(out, moved, op=dist.ReduceOp.SUM, group=group)
    return out.movedim(0, dim).contiguous()


def all_gather_async(x: torch.Tensor, group) -> tuple[torch.Tensor, dist.Work | None]:
    """Start gathering every rank's x into [n, *x.shape]; returns the buffer and the work to wait on
    (so the caller computes something else meanwhile)."""
    n = group_size(group)
    out = torch.empty((n, *x.shape), dtype=x.dtype, device=x.device)
    if n == 1:
        out[0] = x
        return out, None
    return out, _all_gather(
        out.view(n * x.shape[0], *x.shape[1:]), x.contiguous(), group=group, async_op=True
    )


class _GatherSeq(torch.autograd.Function):
    """Megatron's g: all-gather along the sequence forward, reduce-scatter backward."""

    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return all_gather_dim(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return reduce_scatter_dim(grad, ctx.dim, ctx.group), None, None


class _ReduceScatterSeq(torch.autograd.Function):
    """Megatron's g-bar: reduce-scatter along the sequence forward, all-gather backward."""

    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return reduce_scatter_dim(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return all_gather_dim(grad, ctx.dim, ctx.group), None, None


def gather_seq(x: torch.Tensor, group: dist.ProcessGroup, dim: int = 1) -> torch.Tensor:
    return _GatherSeq.apply(x, dim, group)


def reduce_scatter_seq(x: torch.Tensor, group: dist.ProcessGroup, dim: int = 1) -> torch.Tensor:
    return _ReduceScatterSeq.apply(x, dim, group)


# ---- gradient synchronisation of replicated parameters ---------------------------------------------


def sum_grads(params: list[torch.nn.Parameter], group: dist.ProcessGroup) -> None:
    """SUM-all-reduce the gradients of parameters replicated over `group` whose ranks saw disjoint
    tokens, as one flat all-reduce (what a DDP bucket does)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or group_size(group) == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
