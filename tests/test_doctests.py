"""The runnable examples in module docstrings stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "pt2interp.archive",
    "pt2interp.program",
    "pt2interp.symexpr",
    "pt2interp.treespec",
    "pt2interp.loaded",
    "pt2interp.api",
    "pt2interp.torch_pickle",
    "pt2interp.introspect",
    "pt2interp.extract",
    "pt2interp.numpy_weights",
    "pt2interp.payload",
    "pt2interp.byteorder",
    "pt2interp.jsontext",
    "pt2interp.limits",
    "pt2interp.printable",
    "pt2interp.ops.policy",
    "pt2interp.ops.registry",
    "pt2interp.codegen",
    "pt2interp.cli",
    "pt2interp.codegen.layout",
    "pt2interp.codegen.names",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
