#!/usr/bin/env bash
# spbench entry point.
#   bash run.sh          set up if needed, run the default sweep on this machine, print the report
#   bash run.sh test     set up if needed, run the test suite
# Extra arguments after `test` go to pytest; extra arguments to the sweep go to Hydra.
set -euo pipefail
cd "$(dirname "$0")"

setup() {
    if [ -z "${VIRTUAL_ENV:-}" ]; then
        [ -x .venv/bin/python ] || python3 -m venv .venv
        # shellcheck disable=SC1091
        source .venv/bin/activate
    fi
    # Keep a torch that is already importable (e.g. a CUDA build on a GPU box); otherwise take the
    # pinned CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
    if ! python -c "import torch" 2>/dev/null; then
        python -m pip install -q "torch==2.13.0"
    fi
    local stamp="$VIRTUAL_ENV/.spbench-$(sha1sum pyproject.toml | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        python -m pip install -q -e .
        touch "$stamp"
    fi
}

default_sweep() {
    local gpus out methods
    gpus=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
    out="results/sweeps/default_$(date +%Y%m%d_%H%M%S)"
    methods=$(python -m harness.methods llm)
    if [ "$gpus" -ge 2 ]; then
        echo "== default sweep: NCCL on $gpus GPUs, llama3_8b (2 layers), bf16: $methods"
        python -m harness.run -m "method=$methods" model=llama3_8b model.layers=2 dtype=bfloat16 \
            "world_size=$gpus" workload.seq_len=16384,32768 hardware=h100_nvlink_8x \
            "hydra.sweep.dir=$out" "$@"
    else
        echo "== default sweep: gloo on CPU, 4 ranks, tiny model, float32: $methods"
        python -m harness.run -m "method=$methods" model=tiny dtype=float32 world_size=4 \
            workload.seq_len=256,1024 hardware=cpu "hydra.sweep.dir=$out" "$@"
    fi
    echo
    python -m harness.report "$out"
    echo
    echo "rows: $out"
}

setup
if [ "${1:-}" = "test" ]; then
    shift
    python -m pytest "$@"
else
    default_sweep "$@"
fi
