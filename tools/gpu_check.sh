#!/usr/bin/env bash
# The whole GPU check in one run, for a lent machine (torch with CUDA preinstalled, no
# network): `pytest -m cuda` (the fixtures on CUDA first, counted), the CUDA benchmark and the
# segments benchmark. Everything goes to $OUT (the folder the device tool brings back);
# a summary goes to standard output. All of it ends within TOTAL_S (default 560 s, inside one
# 10-minute call): the fixtures on CUDA get at most FIXTURES_TIMEOUT_S (100), the other CUDA
# tests PYTEST_TIMEOUT_S (150), the segments benchmark SEGMENTS_TIMEOUT_S (80), and the CUDA
# benchmark what is left.
#   bash tools/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}  # the device tool sets it; here, a folder of the checkout
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONUNBUFFERED=1

if ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1; then
    # without the install, the packages installed under other names (ops/ is pt2interp.ops,
    # codegen/ pt2interp.codegen) are put where imports from the checkout find them
    echo "install failed, running from the checkout:"; tail -3 "$OUT/install.log"
    ln -sfn ../ops pt2interp/ops; ln -sfn ../codegen pt2interp/codegen
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$PY" -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.is_available())"
    git log --oneline -1 2>/dev/null
} >"$OUT/env.txt" 2>&1
echo "== environment"; cat "$OUT/env.txt"

# one line per test as it ends (-v), so that a run cut short still counts: first the fixtures
# on CUDA (the count issue #17 asks for), then every other CUDA test but the benchmark's smoke
# test (the full benchmark runs below)
per_test=()
"$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 60)
fixtures=tests/test_devices.py::test_every_fixture_runs_on_cuda
cuda_tests() {  # cuda_tests LIMIT_S OUTPUT_FILE PYTEST_ARGS...
    local limit=$1 out=$2; shift 2
    timeout "$limit" "$PY" -m pytest -m cuda -v -p no:cacheprovider -rfE --disable-warnings \
        "${per_test[@]}" "$@" >"$out" 2>&1
    echo "exit $?"; grep -E "^(FAILED|ERROR)" "$out" | head -20; tail -1 "$out"
}

echo "== fixtures equal to their references on CUDA (test_every_fixture_runs_on_cuda)"
cuda_tests "${FIXTURES_TIMEOUT_S:-100}" "$OUT/pytest-fixtures.txt" "$fixtures"
grep -cE "^$fixtures\[.* PASSED" "$OUT/pytest-fixtures.txt" | sed 's/^/passed: /'

echo "== pytest -m cuda (the rest)"
cuda_tests "${PYTEST_TIMEOUT_S:-150}" "$OUT/pytest-cuda.txt" tests --deselect "$fixtures" \
    --deselect tests/test_cuda_bench.py::test_smoke_on_cuda

seg_s=${SEGMENTS_TIMEOUT_S:-80}
budget=$(( ${TOTAL_S:-560} - SECONDS - seg_s - 50 ))
echo "== python -m benchmarks.cuda (budget ${budget} s)"
if [ "$budget" -gt 60 ]; then
    timeout $((budget + 40)) "$PY" -m benchmarks.cuda --budget-s "$budget" \
        --hard-limit-s $((budget + 30)) --json "$OUT/cuda.json" >"$OUT/cuda.txt" 2>&1
    echo "exit $?"; tail -40 "$OUT/cuda.txt"
else
    echo "skipped: too little time left"
fi

echo "== python -m benchmarks.cuda_segments"
timeout "$seg_s" "$PY" -m benchmarks.cuda_segments --rounds 5 --iters 30 \
    --json "$OUT/segments.json" >"$OUT/segments.txt" 2>&1
echo "exit $?"; tail -14 "$OUT/segments.txt"
