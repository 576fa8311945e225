"""Tensor-level peak memory of one step: every storage an op creates is timed from its creation to its
release; the peak of the live bytes, and what was live at that moment by category, come from a sweep
over those lifetimes afterwards. O(1) per op, so a paper-scale dryrun (tens of thousands of fake ops)
stays fast, where a tracker that walks every live tensor at each op grows quadratically.

Categories at the peak: param (storages of the model's parameters before the step), input (x and dy),
grad (storages that are a parameter's or the input's .grad after the step), act (everything else the
step created: saved activations, temporaries, communication buffers, gathered ZeRO-3 parameters)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CATEGORIES = ("param", "input", "grad", "act")


def _storage(t: torch.Tensor) -> torch.UntypedStorage:
    local = t.to_local() if hasattr(t, "to_local") else t  # a DTensor's memory is its local shard
    return local.untyped_storage()


class PeakMemory(TorchDispatchMode):
    """`with PeakMemory(params, inputs) as m: step()`, then `m.peak(grads)` -> (bytes, {category: bytes});
    `m.live()` during the step gives what is alive at that moment."""

    def __init__(self, params: Iterable[torch.Tensor], inputs: Iterable[torch.Tensor]) -> None:
        super().__init__()
        self.clock = 0
        self.lifetimes: list[list] = []  # [bytes, created, released, category] per storage
        self.alive: dict[int, list] = {}  # id(storage) -> its lifetime, while it lives
        self._refs: list[weakref.ref] = []
        for category, tensors in (("param", params), ("input", inputs)):
            for t in tensors:
                self._track(_storage(t), category, created=-1)

    def _track(self, storage: torch.UntypedStorage, category: str, created: int) -> None:
        if id(storage) in self.alive:
            return  # a view or an in-place result: the storage is already counted
        entry = [storage.nbytes(), created, None, category]
        self.lifetimes.append(entry)
        key = id(storage)
        self.alive[key] = entry
        self._refs.append(weakref.ref(storage, lambda _: self._release(key, entry)))

    def __enter__(self) -> PeakMemory:
        # FSDP2 frees and re-allocates gathered parameters by resizing their storage in place, which
        # no op shows: follow storage resizes while the mode is on
        self._resize = resize = torch.UntypedStorage.resize_

        def tracked_resize(storage: torch.UntypedStorage, size: int):
            out = resize(storage, size)
            entry = self.alive.get(id(storage))
            if entry is not None and storage.nbytes() != entry[0]:
                self._release(id(storage), entry)
                self._track(storage, entry[3], self.clock)
            return out

        # patched while the mode is on, restored on exit
        torch.UntypedStorage.resize_ = tracked_resize  # type: ignore[method-assign, assignment]
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        torch.UntypedStorage.resize_ = self._resize  # type: ignore[method-assign]  # restores the original
        return super().__exit__(*exc)

    def _release(self, key: int, entry: list) -> None:
        if entry[2] is not None:  # already closed by a resize
            return
        self.clock += 1
        entry[2] = self.clock
        if self.alive.get(key) is entry:
            del self.alive[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.clock += 1
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(_storage(t), "act", self.clock)
        return out

    def live(self) -> dict[str, int]:
        """Bytes alive now, by category (e.g. at the end of the forward: the saved activations)."""
        detail = dict.fromkeys(CATEGORIES, 0)
        for entry in self.alive.values():
            detail[entry[3]] += entry[0]
        return detail

    def peak(self, grads: Iterable[torch.Tensor]) -> tuple[int, dict[str, int]]:
        """Peak live bytes during the step and their split by category; `grads` are the tensors
        that hold gradients after the step (re-labelled from act to grad)."""
        for g in grads:
            entry = self.alive.get(id(_storage(g))) if g is not None else None
            if entry is not None and entry[3] == "act":
                entry[3] = "grad"
        events = sorted(
            [(e[1], e[0]) for e in self.lifetimes]
            + [(e[2], -e[0]) for e in self.lifetimes if e[2] is not None]
        )  # frees first at a tie
        live, best, best_time = 0, -1, -1
        for time, delta in events:
            live += delta
            if live > best:
                best, best_time = live, time
        detail = dict.fromkeys(CATEGORIES, 0)
        for nbytes, created, released, category in self.lifetimes:
            if created <= best_time and (released is None or released > best_time):
                detail[category] += nbytes
        return best, detail
