#!/usr/bin/env bash
# The whole GPU check in one run, for a lent machine (torch with CUDA preinstalled, no
# network): `pytest -m cuda`, the CUDA fixture count, and the CUDA benchmark. Everything goes
# to $OUT (the folder the device tool brings back); a summary goes to standard output.
#   bash tools/gpu_check.sh            # about 8 minutes; BENCH_BUDGET_S=240 by default
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}  # the device tool sets it; here, a folder of the checkout
mkdir -p "$OUT"
PY=${PYTHON:-python}

"$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1 \
    || { echo "install failed:"; tail -5 "$OUT/install.log"; }
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$PY" -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.is_available())"
    git log --oneline -1 2>/dev/null
} >"$OUT/env.txt" 2>&1
echo "== environment"; cat "$OUT/env.txt"

echo "== pytest -m cuda"
timeout "${PYTEST_TIMEOUT_S:-200}" "$PY" -m pytest -m cuda -q -p no:cacheprovider -rfE --disable-warnings \
    >"$OUT/pytest-cuda.txt" 2>&1
echo "exit $?"; tail -15 "$OUT/pytest-cuda.txt"

echo "== fixtures equal to their references on CUDA (test_every_fixture_runs_on_cuda)"
timeout 120 "$PY" -m pytest -m cuda -q -p no:cacheprovider -rA \
    "tests/test_devices.py::test_every_fixture_runs_on_cuda" >"$OUT/fixtures-cuda.txt" 2>&1
grep -c "^PASSED" "$OUT/fixtures-cuda.txt" | sed 's/^/passed: /'
grep -E "^(FAILED|ERROR)" "$OUT/fixtures-cuda.txt" | head -20

echo "== python -m benchmarks.cuda"
timeout "${BENCH_TIMEOUT_S:-330}" "$PY" -m benchmarks.cuda --budget-s "${BENCH_BUDGET_S:-240}" \
    --json "$OUT/cuda.json" >"$OUT/cuda.txt" 2>&1
echo "exit $?"; tail -40 "$OUT/cuda.txt"
