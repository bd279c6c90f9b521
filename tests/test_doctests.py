"""The runnable examples in the docstrings of every module of the packages stay true.

The modules are found by walking the installed packages, each imported once under its
installed name (``pt2interp.ops.registry``). ``pytest --doctest-modules`` cannot do that here:
it names a module after its file, so ``ops/registry.py`` would be imported a second time as a
top-level ``ops.registry`` (with an op table of its own that registers every op twice).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.metadata
import pkgutil
import re
import sys
from pathlib import Path

import pytest

# ops/ and codegen/ install as pt2interp.ops and pt2interp.codegen from folders outside
# pt2interp/ (pyproject's package-dir), so walking pt2interp alone misses them in an
# editable install; the subpackages under pt2interp/ (serve, examples) are walked into.
ROOTS = ("pt2interp", "pt2interp.ops", "pt2interp.codegen")


def _module_names() -> list[str]:
    names = []
    for root in ROOTS:
        package = importlib.import_module(root)
        names.append(root)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, f"{root}.")]
    return sorted(set(names))


def _optional_modules() -> frozenset[str]:
    """Top-level import names of the distributions the extras bring (``torch``, ``fastapi``,
    ``grpc`` for grpcio, ``google`` for protobuf, ...), from the installed metadata."""
    extras = [r for r in importlib.metadata.requires("pt2interp") or () if "extra ==" in r]
    wanted = {re.match(r"[A-Za-z0-9_.-]+", r).group().lower().replace("-", "_") for r in extras}
    names = set(wanted)  # a distribution not installed: its import name is usually its own
    for module, dists in importlib.metadata.packages_distributions().items():
        if any(d.lower().replace("-", "_") in wanted for d in dists):
            names.add(module)
    return frozenset(names)


MODULES = _module_names()


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as error:  # ModuleNotFoundError, or an extra installed but unusable
        missing = (error.name or "").split(".")[0]
        if missing not in _optional_modules():
            raise
        pytest.skip(f"{name} needs {missing}, which an optional extra installs ({error})")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_every_package_is_walked():
    """Every package pyproject installs is among the walked modules."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]
    assert sorted(set(packages) - set(MODULES)) == []


def test_no_module_is_imported_under_a_second_name():
    """A package folder's module is only ever imported under its installed name."""
    folders = {Path(importlib.import_module(root).__path__[0]).name for root in ROOTS}
    assert sorted(n for n in sys.modules if n.split(".")[0] in folders - {"pt2interp"}) == []
