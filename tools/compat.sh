#!/usr/bin/env bash
# Run the test suite against another torch release (and optionally another Python).
#
#   tools/compat.sh 2.8.0                       # torch 2.8.0 on python3
#   tools/compat.sh 2.10.0 python3.13           # torch 2.10.0 on Python 3.13
#   tools/compat.sh 2.5.1 python3.10 -k fixture # extra arguments go to pytest
#   tools/compat.sh --setup-only 2.8.0          # build the venv, run nothing
#
# Each (torch, Python) pair gets its own venv under $PT2INTERP_COMPAT_DIR (default
# ~/.cache/pt2interp/compat), built once and reused. torch comes from PyPI: on x86-64 that
# is a CUDA build with its NVIDIA libraries (about 4 GB a venv); it runs on the CPU as well.
# A pip constraint file that caps the torch release (as some machines set globally) is
# ignored inside these venvs, since asking for a particular release is their whole point.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

setup_only=0
if [[ ${1:-} == "--setup-only" ]]; then setup_only=1; shift; fi
[[ $# -ge 1 && ${1:-} != -* ]] || usage
torch_version=$1; shift
python=python3
if [[ $# -ge 1 && ${1:-} != -* ]]; then python=$1; shift; fi
if ! command -v "$python" >/dev/null 2>&1; then
    echo "compat: no Python interpreter named '$python' on PATH" >&2; exit 2
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
py_tag=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
root=${PT2INTERP_COMPAT_DIR:-$HOME/.cache/pt2interp/compat}
venv="$root/torch-$torch_version-py$py_tag"

if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "compat: building $venv (torch $torch_version, Python $py_tag)" >&2
    mkdir -p "$root"
    "$python" -m venv --clear "$venv"
    export PIP_CONSTRAINT=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "torch==$torch_version"
fi
# The project itself is reinstalled every time: cheap, and it follows the checkout.
PIP_CONSTRAINT=/dev/null "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$repo[test,serve]"

actual=$("$venv/bin/python" -c 'import sys, torch; print(torch.__version__, sys.version.split()[0])')
echo "compat: torch and Python in $venv: $actual" >&2
[[ $setup_only == 1 ]] && exit 0

cd "$repo"
# No bytecode or cache written into the checkout: several venvs may share it at once.
exec env PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
