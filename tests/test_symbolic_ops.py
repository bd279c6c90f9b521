"""The Python-operator and sym-int entries: each runs and reads as what it names.

These targets appear in graphs with dynamic shapes (``_operator.mul`` on sizes, ``math.trunc``,
``torch.sym_max``). Every one is exercised here: its kernel against the plain Python/torch
function, and its rendering, evaluated, against its kernel.
"""

from __future__ import annotations

import math
import operator

import pytest
import torch

from pt2interp.ops import REGISTRY
from pt2interp.ops.registry import Call

_ARGS = {
    "neg": (7,),
    "pos": (7,),
    "not_": (0,),
    "abs": (-7,),
    "getitem": ((3, 5, 9), 1),
    "trunc": (2.7,),
    "ceil": (2.2,),
    "floor": (2.7,),
    "sqrt": (16.0,),
    "sym_float": (3,),
    "sym_int": (3.9,),
    "sym_max": (3, 8),
    "sym_min": (3, 8),
    "sym_not": (True,),
    "sym_sqrt": (16,),
    "_sym_sqrt": (16,),
    "sym_ite": (True, 4, 9),
    "sym_sum": ([3, 4, 5],),
}
_PLAIN = {"_operator": operator, "math": math, "torch": torch}

TARGETS = sorted(
    t for t in REGISTRY if t.startswith(("_operator.", "math.", "torch.sym_", "torch._sym"))
)


def test_a_bool_size_condition_becomes_an_int():
    entry = REGISTRY["torch.fx.experimental.symbolic_shapes.cast_symbool_to_symint_guardless"]
    assert entry.kernel(True) == 1 and entry.kernel(False) == 0
    assert (
        eval(entry.render(Call(entry.target, {}, positional=["b"])), {"b": True}) == 1
    )  # our own rendering


def _args(name: str):
    return _ARGS.get(name, (12, 5))


@pytest.mark.parametrize("target", TARGETS)
def test_symbolic_entry_runs_and_renders(target):
    module, name = target.split(".", 1)
    entry = REGISTRY[target]
    args = _args(name)
    if not hasattr(_PLAIN[module], name):
        pytest.skip(f"torch {torch.__version__} has no {target}")
    want = getattr(_PLAIN[module], name)(*args)
    got = entry.kernel(*args)
    assert got == want and type(got) is type(want)
    names = [f"a{i}" for i in range(len(args))]
    source = entry.render(Call(target, {}, positional=names))
    namespace = {"torch": torch, "math": math, "operator": operator, **dict(zip(names, args))}
    assert eval(compile(source, "<rendered>", "eval"), namespace) == want  # our own rendering


def test_every_symbolic_target_is_covered():
    assert len(TARGETS) >= 30
    for target in TARGETS:
        assert REGISTRY[target].kernel is not None and REGISTRY[target].render is not None


def test_size_arithmetic_bombs_are_refused():
    with pytest.raises(OverflowError):
        REGISTRY["_operator.pow"].kernel(10, 10**6)
    with pytest.raises(OverflowError):
        REGISTRY["_operator.lshift"].kernel(1, 10**6)
