"""Which global token positions each rank holds. A layout is a list (one per rank) of index tensors
into the token axis; sharding is `index_select`, reassembly is the inverse scatter, and RoPE reads
its positions from the same indices, so positions always follow the layout. Index tensors live on
the CPU (they are bookkeeping); whoever applies one to data moves it to the data's device."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

from .config import InvalidConfig


def real_indices(layout: Callable[..., list[torch.Tensor]]) -> Callable[..., list[torch.Tensor]]:
    """Decorates a method's layout: index tensors are metadata that code reads as numbers, so they
    stay real tensors even inside a dryrun's fake-tensor mode."""

    @functools.wraps(layout)
    def real(*args, **kwargs) -> list[torch.Tensor]:
        with unset_fake_temporarily():
            return layout(*args, **kwargs)

    return real


def contiguous(length: int, n: int) -> list[torch.Tensor]:
    """Rank r holds [r*L/n, (r+1)*L/n). Each index owns its storage: a view would keep the whole
    arange alive on the CPU, but not once copied to a GPU, and memory must not depend on that."""
    return [chunk.clone() for chunk in torch.arange(length, device="cpu").view(n, length // n)]


def zigzag(length: int, n: int) -> list[torch.Tensor]:
    """2n chunks; rank r holds chunks r and 2n-1-r (equal causal work on every rank)."""
    chunks = torch.arange(length, device="cpu").view(2 * n, length // (2 * n))
    return [torch.cat((chunks[r], chunks[2 * n - 1 - r])) for r in range(n)]


def stripe(length: int, n: int) -> list[torch.Tensor]:
    """Token t lives on rank t mod n."""
    return [torch.arange(r, length, n, device="cpu") for r in range(n)]


LAYOUTS = {"contiguous": contiguous, "basic": contiguous, "zigzag": zigzag, "stripe": stripe}
CHUNKS_PER_RANK = {"contiguous": 1, "basic": 1, "zigzag": 2, "stripe": 1}


def check_divisible(name: str, length: int, n: int) -> None:
    chunks = CHUNKS_PER_RANK[name] * n
    if length % chunks:
        raise InvalidConfig(
            f"seq_len {length} is not divisible by {chunks} "
            f"(layout {name!r} over {n} ranks needs {chunks} equal chunks)"
        )


def make(name: str, length: int, n: int) -> list[torch.Tensor]:
    if name not in LAYOUTS:
        raise InvalidConfig(f"unknown layout {name!r}; choose from {sorted(LAYOUTS)}")
    check_divisible(name, length, n)
    return LAYOUTS[name](length, n)


def shard(x: torch.Tensor, index: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return x.index_select(dim, index.to(x.device)).contiguous()


def unshard(parts: list[torch.Tensor], indices: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Inverse of `shard` over all ranks: put each rank's part back at its positions."""
    length = sum(int(i.numel()) for i in indices)
    shape = list(parts[0].shape)
    shape[dim] = length
    out = parts[0].new_empty(shape)
    for part, index in zip(parts, indices):
        out.index_copy_(dim, index.to(out.device), part)
    return out
