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
    local gpus out softmax linear video
    gpus=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
    out="results/sweeps/default_$(date +%Y%m%d_%H%M%S)"
    softmax=$(python -m harness.methods llm llama)   # every method that runs a Llama block
    linear=$(python -m harness.methods llm linear)   # and every one that runs a linear-attention block
    video=$(python -m harness.methods video video)   # and the spatial-temporal (video) block
    if [ "$gpus" -ge 2 ]; then
        echo "== default sweep: NCCL on $gpus GPUs, bf16: llama3_8b (2 layers): $softmax; linear_llama3_1b (2 layers): $linear; dsp_720m (2 layers): $video"
        python -m harness.run -m "method=$softmax" model=llama3_8b model.layers=2 dtype=bfloat16 \
            "world_size=$gpus" workload.seq_len=16384,32768 hardware=h100_nvlink_8x "hydra.sweep.dir=$out/llama" "$@"
        python -m harness.run -m "method=$linear" model=linear_llama3_1b model.layers=2 dtype=bfloat16 \
            "world_size=$gpus" workload.seq_len=16384,32768 hardware=h100_nvlink_8x "hydra.sweep.dir=$out/linear" "$@"
        python -m harness.run -m "method=$video" workload=video model=dsp_720m model.layers=2 dtype=bfloat16 \
            "world_size=$gpus" workload.spatial=4096 workload.frames=16,32 hardware=h100_nvlink_8x \
            "hydra.sweep.dir=$out/video" "$@"
    else
        echo "== default sweep: gloo on CPU, 4 ranks, float32: tiny: $softmax; tiny_linear: $linear; tiny_video: $video"
        python -m harness.run -m "method=$softmax" model=tiny dtype=float32 world_size=4 \
            workload.seq_len=256,1024 hardware=cpu "hydra.sweep.dir=$out/llama" "$@"
        python -m harness.run -m "method=$linear" model=tiny_linear dtype=float32 world_size=4 \
            workload.seq_len=256,1024 hardware=cpu "hydra.sweep.dir=$out/linear" "$@"
        python -m harness.run -m "method=$video" workload=video model=tiny_video dtype=float32 world_size=4 \
            workload.spatial=64 workload.frames=8,16 hardware=cpu "hydra.sweep.dir=$out/video" "$@"
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
