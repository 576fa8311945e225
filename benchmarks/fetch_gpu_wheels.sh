#!/usr/bin/env bash
# Wheels that harness.run imports at start-up and the lent GPU machine's image lacks (it has torch,
# pandas, pyyaml, pytest... but no Hydra and no internet): hydra-core, omegaconf and their parser
# runtime antlr4-python3-runtime, for CPython 3.12 on x86_64 Linux, into .whl/ at the repository root.
# benchmarks/gpu_check.sh installs them from there (pip --no-index --target) when Hydra is missing.
# .whl/ is git-ignored: the wheels travel with the working tree (the device tool's `carry`), never in git.
#   bash benchmarks/fetch_gpu_wheels.sh      (from the repository root; needs a package index)
# Versions: the ones the project's venv is tested with; override with HYDRA_VERSION= etc.
# Everything else harness.run imports at start-up is on the GPU image: attrs is optional in omegaconf,
# packaging comes with matplotlib and pytest, submitit and jupytext are only imported when used.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
HYDRA_VERSION=${HYDRA_VERSION:-1.3.8}
OMEGACONF_VERSION=${OMEGACONF_VERSION:-2.3.1}
ANTLR_VERSION=${ANTLR_VERSION:-4.9.3}
mkdir -p .whl
target=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for spec in "hydra-core==$HYDRA_VERSION" "omegaconf==$OMEGACONF_VERSION"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: "${target[@]}" -d .whl "$spec"
done
# antlr4-python3-runtime 4.9.3 is published as an sdist only: download it and build the (pure-Python,
# py3-none-any) wheel here, so the GPU machine installs it without a build step or an index.
if ! "$PY" -m pip download -q --no-deps --only-binary=:all: "${target[@]}" -d .whl \
        "antlr4-python3-runtime==$ANTLR_VERSION" 2>/dev/null; then
    sdist=$(mktemp -d)
    trap 'rm -rf "$sdist"' EXIT
    "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$sdist" "antlr4-python3-runtime==$ANTLR_VERSION"
    "$PY" -m pip wheel -q --no-deps -w .whl "$sdist"/antlr4*
fi
ls -l .whl
# a wheel that is not pure Python would not install on the GPU machine's Python: refuse it here
for w in .whl/*.whl; do
    case "$w" in *-py3-none-any.whl|*-py2.py3-none-any.whl|*cp312*) ;; *) echo "unexpected wheel: $w" >&2; exit 1 ;; esac
done
