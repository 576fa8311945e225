#!/usr/bin/env bash
# The one-shot device check (issue 13): one run on a lent GPU (one H100/H200), under 8 minutes, records
#   1 versions      torch, CUDA, cuDNN, NCCL, device and capability, Python
#   2 kernels       every attention kernel vs float64 math (D 64/72/128, GQA 32/8, causal and not,
#                   L=4095): out, LSE, dq, dk, dv; causal fwd / fwd+bwd TFLOP/s at 16K tokens, bf16
#   3 blocks        ring (basic, zigzag, stripe) and all-gather CP (zigzag, contiguous) block algebra
#                   for 8 simulated ranks on each kernel vs whole-sequence math
#   4 micro         the pytest-benchmark micro-benchmarks (GPU-sized), short
#   5 emulate_*     mode=emulate rows: every LLM method at 32K and ulysses / ring zigzag at 128K
#                   (Llama3-8B block, 1 layer, 8 ranks, bf16, h100_nvlink_8x), DSP 720M and LASP-2 at a
#                   paper point each; every row ok with counted bytes equal to the cost model
#   6 real          mode=real on NCCL, world_size 1, verify=true: ulysses, ring, ulysses_zero3, odysseus
#   7 summary       summary.md / summary.csv: targets next to measured values, each step's result
# into results/published/<device>/ (with COMMAND.txt, steps.csv and logs/<step>.log). Each step runs
# under its own timeout, capped by what is left of the run's budget; a failed, timed-out or skipped
# step is recorded and the next one runs. Exit 0 only when every step passed.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--copy-to DIR] [--budget SECONDS]   (repository root)
#   bash benchmarks/gpu_check.sh --cpu [--out DIR]     the same steps at tiny sizes on CPU (gloo)
#
# The interpreter is $PYTHON (default python3); the project is not installed, PYTHONPATH points at
# the repository. When Hydra is missing (the GPU image) and .whl/ holds the wheels from
# benchmarks/fetch_gpu_wheels.sh, they are installed into /tmp/site first. The git sha comes from
# git, or from $GPU_CHECK_GIT_SHA where the tree has no .git. See benchmarks/README.md.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cpu=0 out="" copy_to="" budget="" args_seen="$*"
while (( $# )); do
    case "$1" in
        --cpu) cpu=1 ;;
        --out) out=$2; shift ;;
        --copy-to) copy_to=$2; shift ;;
        --budget) budget=$2; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
PY=${PYTHON:-python3}
export PYTHON="$PY"

if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null && ! $PY -c "import hydra, omegaconf, antlr4" 2>/dev/null; then
    site=${GPU_CHECK_SITE:-/tmp/site}
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
        && export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

cpu_flag=()
if (( cpu )); then
    cpu_flag=(--cpu)
    # the CPU box is shared: one thread per step process (spinning OpenMP threads under load cost 3-5x)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    out=${out:-results/gpu_check_cpu}
    budget=${budget:-300}
    micro_opts=(--benchmark-max-time=0.05 --benchmark-min-rounds=1)
else
    device=$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))") || {
        echo "no CUDA device (use --cpu)" >&2; exit 2; }
    out=${out:-results/published/$device}
    budget=${budget:-430}
    micro_opts=(--benchmark-max-time=0.5 --benchmark-min-rounds=3)
fi
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
sha=${GPU_CHECK_GIT_SHA:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
{ echo "# produced by: bash benchmarks/gpu_check.sh $args_seen"; echo "# git: $sha"; date -u; } > "$out/COMMAND.txt"
echo "step,status,rc,seconds,timeout_s" > "$out/steps.csv"

started=$(date +%s)
deadline=$(( started + budget ))
reserve=20   # kept for the summary
# run_step NAME CAP_SECONDS COMMAND...: run under min(CAP, time left before the reserve), log to logs/NAME.log
run_step() {
    local name=$1 cap=$2; shift 2
    local left=$(( deadline - reserve - $(date +%s) ))
    local limit=$(( cap < left ? cap : left ))
    [[ $name == summary ]] && limit=$cap
    local status rc secs t0
    if (( limit < 10 )); then
        status=skipped rc="" secs=0
        echo "no time left in the ${budget}s budget" > "$out/logs/$name.log"
    else
        t0=$(date +%s.%N)
        timeout -k 10 "$limit" "$@" > "$out/logs/$name.log" 2>&1
        rc=$?
        secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
        case $rc in 0) status=passed ;; 124|137) status=timeout ;; *) status=failed ;; esac
    fi
    echo "$name,$status,$rc,$secs,$limit" >> "$out/steps.csv"
    echo "[$status] $name in ${secs}s (limit ${limit}s) -> $out/logs/$name.log"
    if [[ $status != passed ]]; then
        tail -n 15 "$out/logs/$name.log" | sed 's/^/    /'
    fi
}

check=(benchmarks/gpu_check.py)
step_versions() { run_step versions 60 $PY "${check[@]}" versions --out "$out"; }
step_kernels() { run_step kernels 150 $PY "${check[@]}" kernels --out "$out" "${cpu_flag[@]}"; }
step_blocks() { run_step blocks 100 $PY "${check[@]}" blocks --out "$out" "${cpu_flag[@]}"; }
step_micro() {
    run_step micro 150 $PY -m pytest benchmarks/ -q -p no:cacheprovider --benchmark-enable --benchmark-warmup=off \
        "${micro_opts[@]}" --benchmark-json="$out/micro_benchmarks.json"
}
emulate() { run_step "emulate_$1" "$2" $PY "${check[@]}" emulate --part "$1" --out "$out" "${cpu_flag[@]}"; }
step_llm_32k() { emulate llm_32k 180; }
step_llm_128k() { emulate llm_128k 120; }
step_video() { emulate video 90; }
step_linear() { emulate linear 90; }
step_real() { run_step real 150 $PY "${check[@]}" real --out "$out" "${cpu_flag[@]}"; }

step_versions
if (( cpu )); then
    # CPU: two steps at a time (mostly single-threaded imports and launches; timings are indicative only)
    step_kernels & step_blocks & wait
    step_micro & step_real & wait
    step_llm_32k & step_llm_128k & wait
    step_video & step_linear & wait
else  # a GPU runs one step at a time, in this order, so that no step's timing shares the device
    step_kernels; step_blocks; step_micro; step_llm_32k; step_llm_128k; step_video; step_linear; step_real
fi
run_step summary 30 $PY "${check[@]}" summary --out "$out" "${cpu_flag[@]}"
echo "total $(( $(date +%s) - started ))s; summary: $out/summary.md"
[[ -f $out/summary.md ]] && cat "$out/summary.md"
if [[ -n $copy_to ]]; then  # one archive and the summary: the device tool brings back at most 8 files
    mkdir -p "$copy_to" && tar -C "$(dirname "$out")" -czf "$copy_to/gpu_check.tgz" "$(basename "$out")" \
        && cp "$out/summary.md" "$copy_to/"
fi
# every step passed (steps.csv, since steps run in the background in CPU mode set all_ok in a subshell)
awk -F, 'NR > 1 && $2 != "passed" { bad = 1 } END { exit bad }' "$out/steps.csv"
