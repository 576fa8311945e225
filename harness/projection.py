"""Projected communication time: each counted collective costs the hardware profile's latency plus
its bus bytes over the link it crosses (nccl-tests convention: bus bytes / bus bandwidth), serially.

A group whose ranks sit on more than one node (`gpus` per node, ranks placed node after node) runs at
the inter-node bandwidth, the slowest link of its ring; otherwise at the NVLink bandwidth."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from methods.common.cost import bus_bytes

from .comm import Record


def spans_nodes(ranks: Iterable[int], gpus_per_node: int) -> bool:
    return len({r // gpus_per_node for r in ranks}) > 1


def collective_seconds(record: Record, hardware: Mapping) -> float:
    """Time of one collective on `hardware` (a conf/hardware profile)."""
    if record.kind == "recv":  # a receive is the other half of a counted send
        return 0.0
    inter = spans_nodes(record.ranks, int(hardware.get("gpus") or len(record.ranks)))
    bw = hardware.get("inter_node_bw_GBps") if inter else None
    latency = hardware.get("inter_node_latency_us") if inter else None
    bw, latency = bw or hardware["link_bw_GBps"], latency or hardware["latency_us"]
    moved = bus_bytes(record.kind, record.full_bytes, record.group_size)
    return 1e-6 * latency + float(moved) / (1e9 * bw)


def comm_seconds(records: Iterable[Record], hardware: Mapping) -> float:
    """One step's communication time for one rank with no overlap between collectives."""
    return sum(collective_seconds(r, hardware) for r in records)
