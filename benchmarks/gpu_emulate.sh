#!/usr/bin/env bash
# The GPU experiment of issue 8: emulate mode on this machine's GPU for every LLM method on a
# Llama3-8B block (8 ranks, 32K/64K/128K tokens) plus the DSP 720M and Linear-Llama3-1B paper points,
# then the GPU-sized micro-benchmarks. Rows and the command land in results/published/<device>/.
#   bash benchmarks/gpu_emulate.sh            (from the repository root, with the venv active)
set -euo pipefail
device=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
out="results/published/$device"
mkdir -p "$out"
for experiment in gpu_emulate gpu_emulate_video gpu_emulate_linear; do
    python -m harness.run -m "+sweep=$experiment" "hydra.sweep.dir=$out/$experiment" "$@"
done
python -m pytest benchmarks/ -q --benchmark-enable --benchmark-json="$out/micro_benchmarks.json"
python -m harness.report "$out"
{ echo "# produced by: bash benchmarks/gpu_emulate.sh $*"; echo "# git: $(git rev-parse HEAD)"; date -u; } > "$out/COMMAND.txt"
