"""`python -m harness.methods [workload] [model kind]`: the registered methods (comma-separated) that
run a workload and model kind with their default options from conf/method/ (run.sh sweeps them)."""

from __future__ import annotations

import sys

import methods

from .groups import options


def for_workload(workload: str, kind: str) -> list[str]:
    configured = set(options("method"))
    return [
        name
        for name, variants in sorted(methods.REGISTRY.items())
        if name in configured and any(workload in m.workloads and kind in m.model_kinds for m in variants)
    ]


if __name__ == "__main__":
    print(",".join(for_workload(*(sys.argv[1:3] + ["llm", "llama"][len(sys.argv[1:3]) :]))))
