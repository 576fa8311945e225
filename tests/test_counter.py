"""The communication counter: every collective kind, FSDP2's own collectives, phase attribution."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from harness.comm import CommCounter
from harness.launch import launch
from harness.worker import call_in_group
from methods.common.collectives import gather_seq

F64 = 8  # bytes per float64


def _collectives() -> dict:
    n, rank = dist.get_world_size(), dist.get_rank()
    x = torch.ones(4, dtype=torch.float64)
    counted = {}

    def count(name, fn):
        with CommCounter() as c:
            fn()
        counted[name] = [(r.kind, r.group_size, r.full_bytes) for r in c.records], c.cost().as_dict()

    count("all_gather", lambda: dist.all_gather_into_tensor(torch.empty(4 * n, dtype=torch.float64), x))
    count("reduce_scatter", lambda: dist.reduce_scatter_tensor(torch.empty(4 // n, dtype=torch.float64), x))
    count("all_to_all", lambda: dist.all_to_all_single(torch.empty(4, dtype=torch.float64), x))
    count("all_reduce", lambda: dist.all_reduce(x.clone()))
    count("broadcast", lambda: dist.broadcast(x.clone(), 0))

    def p2p():
        ops = [
            dist.P2POp(dist.isend, x, (rank + 1) % n),
            dist.P2POp(dist.irecv, torch.empty_like(x), (rank - 1) % n),
        ]
        for req in dist.batch_isend_irecv(ops):
            req.wait()

    count("send_recv", p2p)

    def functional():
        import torch.distributed._functional_collectives as fc

        fc.all_reduce(x, "sum", dist.group.WORLD).wait()
        fc.all_gather_tensor(x, 0, dist.group.WORLD).wait()

    count("functional", functional)

    def phases():  # g: all-gather forward, reduce-scatter backward
        with CommCounter() as c:
            t = torch.ones(2, 3, 5, dtype=torch.float64, requires_grad=True)
            y = gather_seq(t, dist.group.WORLD)
            c.phase = "bwd"
            y.sum().backward()
        return c.cost().as_dict(), c.calls()

    counted["phases"] = phases()

    def fsdp():
        from torch.distributed.fsdp import fully_shard

        torch.manual_seed(0)
        lin = nn.Linear(8, 8, bias=False)
        fully_shard(lin, reshard_after_forward=True)
        with CommCounter() as c:
            y = lin(torch.ones(3, 8))
            c.phase = "bwd"
            y.sum().backward()
        return c.cost().as_dict(), c.calls()

    counted["fsdp"] = fsdp()
    return counted


@pytest.fixture(scope="module")
def counted():
    return launch(call_in_group, (_collectives,), 2)


def test_each_collective_kind_in_bus_bytes(counted):
    r0 = counted[0]
    # 2 ranks: (n-1)/n = 1/2 of the full bytes; all-reduce moves 2(n-1)/n = 1x
    assert r0["all_gather"][1] == {"fwd": {"all_gather": 4 * F64}, "bwd": {}}  # output 8 elements
    assert r0["reduce_scatter"][1] == {"fwd": {"reduce_scatter": 2 * F64}, "bwd": {}}  # input 4 elements
    assert r0["all_to_all"][1] == {"fwd": {"all_to_all": 2 * F64}, "bwd": {}}
    assert r0["all_reduce"][1] == {"fwd": {"all_reduce": 4 * F64}, "bwd": {}}
    assert r0["broadcast"][1] == {"fwd": {"broadcast": 4 * F64}, "bwd": {}}


def test_send_counts_bytes_and_recv_counts_zero(counted):
    records, cost = counted[0]["send_recv"]
    assert sorted(k for k, _, _ in records) == ["recv", "send"]
    assert cost == {"fwd": {"send": 4 * F64}, "bwd": {}}


def test_functional_collectives_are_counted(counted):
    _, cost = counted[0]["functional"]
    assert cost == {"fwd": {"all_gather": 4 * F64, "all_reduce": 4 * F64}, "bwd": {}}


def test_forward_and_backward_attribution(counted):
    cost, calls = counted[0]["phases"]
    full = 2 * 6 * 5 * F64  # gathered [2, 6, 5]
    assert calls == {"fwd": {"all_gather": 1}, "bwd": {"reduce_scatter": 1}}
    assert cost == {"fwd": {"all_gather": full // 2}, "bwd": {"reduce_scatter": full // 2}}


def test_fsdp2_collectives_are_counted(counted):
    cost, calls = counted[0]["fsdp"]
    weight = 8 * 8 * 4  # float32 parameter, gathered whole, gradient reduce-scattered whole
    assert calls == {"fwd": {"all_gather": 1}, "bwd": {"all_gather": 1, "reduce_scatter": 1}}
    assert cost == {
        "fwd": {"all_gather": weight // 2},
        "bwd": {"all_gather": weight // 2, "reduce_scatter": weight // 2},
    }
