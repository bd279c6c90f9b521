#!/usr/bin/env bash
# Creates benchmarks/.venv-kserve, the Python that `python -m benchmarks.serve_bench --http`
# runs KServe's own model server with (its --kserve-python default). KServe pins its own
# fastapi/uvicorn/pydantic, so it gets a venv of its own rather than sharing pt2interp's.
# torch is pinned to the CPU build this machine has as a local wheel: an unpinned torch would
# pull the CUDA build, gigabytes of it.
#
#     bash benchmarks/setup_kserve.sh              # python3.11 unless PYTHON says otherwise
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-kserve"
"${PYTHON:-python3.11}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet torch==2.13.0 kserve==0.21.0
"$venv/bin/python" -c 'import importlib.metadata as m; print("kserve", m.version("kserve"), "torch", m.version("torch"))'
echo "ready: $venv/bin/python"
