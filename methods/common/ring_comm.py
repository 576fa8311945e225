"""The ring's one communication pattern: send to the next rank of a group and receive from the
previous one, posted as a single batch (so no blocking send can deadlock) and waited on later (so
the transfer overlaps whatever is computed in between)."""

from __future__ import annotations

import torch
import torch.distributed as dist


class RingComm:
    def __init__(self, group: dist.ProcessGroup):
        n, r = dist.get_world_size(group), dist.get_rank(group)
        # P2POp takes global ranks
        self.next = dist.get_global_rank(group, (r + 1) % n)
        self.prev = dist.get_global_rank(group, (r - 1) % n)
        self.group = group
        self._ops: list[dist.P2POp] = []
        self._reqs: list = []

    def send_recv(self, tensor: torch.Tensor) -> torch.Tensor:
        """Queue sending `tensor` forward; returns the buffer the previous rank's tensor lands in."""
        recv = torch.empty_like(tensor)
        self._ops += [
            dist.P2POp(dist.isend, tensor.contiguous(), self.next, self.group),
            dist.P2POp(dist.irecv, recv, self.prev, self.group),
        ]
        return recv

    def commit(self) -> None:
        self._reqs = dist.batch_isend_irecv(self._ops)
        self._ops = []

    def wait(self) -> None:
        for req in self._reqs:
            req.wait()
        self._reqs = []
