"""`python -m harness.methods [workload]`: the registered methods (comma-separated) that run a workload,
each with its default options from conf/method/ (used by run.sh to sweep "every method")."""
from __future__ import annotations

import sys

import methods

from .groups import options


def for_workload(workload: str) -> list[str]:
    configured = set(options("method"))
    return [name for name, variants in sorted(methods.REGISTRY.items())
            if name in configured and any(workload in m.workloads for m in variants)]


if __name__ == "__main__":
    print(",".join(for_workload(sys.argv[1] if len(sys.argv) > 1 else "llm")))
