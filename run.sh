#!/usr/bin/env bash
# spbench entry point.
#   bash run.sh          set up if needed, run the default sweep on this machine, print the report
#   bash run.sh test     set up if needed, run the test suite
#   bash run.sh setup    only the set-up
# Extra arguments after `test` go to pytest; extra arguments to the sweep go to Hydra.
set -euo pipefail
cd "$(dirname "$0")"

setup() {
    # The set-up's steps live in harness/setup_env.py (standard library only); each prints one line.
    if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
        # An active virtual or conda environment is used as it is.
        local prefix="${VIRTUAL_ENV:-$CONDA_PREFIX}"
        if [ -x "$prefix/bin/python" ]; then
            export PATH="$prefix/bin:$PATH"
        fi
        echo "setup: using the active environment $prefix"
    else
        # .venv: it sees python3's torch when python3 has one; otherwise a plain venv
        python3 -m harness.setup_env venv .venv
        # shellcheck disable=SC1091
        source .venv/bin/activate
    fi
    python -m harness.setup_env install
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
if [ "${1:-}" = "setup" ]; then
    echo "setup: done; python: $(command -v python)"
elif [ "${1:-}" = "test" ]; then
    shift
    python -m pytest "$@"
else
    default_sweep "$@"
fi
