"""Factory ops (``zeros``, ``full``, ``arange``, ``*_like``, ``new_*``) and fills.

Their tensor options (``dtype``, ``layout``, ``device``, ``pin_memory``,
``memory_format``) are keyword-only in both the schema and the Python functions, under the
same names, so they pass straight through.
"""

from __future__ import annotations

import functools

from pt2interp.ops._render import (
    call_renderer,
    cpu,
    method_renderer,
    randint,
    randn,
    sample,
    torch_attr,
)
from pt2interp.ops.registry import register as _register

register = functools.partial(_register, family="factory")

_OPTIONS = ["dtype", "layout", "device", "pin_memory", "memory_format"]

_FUNCTIONS = [
    # target, torch function, positional schema args, sample
    ("aten.zeros.default", "torch.zeros", ["size"], sample([2, 3], dtype=torch_attr("int32"))),
    ("aten.ones.default", "torch.ones", ["size"], sample([2, 3], device=cpu)),
    ("aten.full.default", "torch.full", ["size", "fill_value"], sample([2, 3], 7)),
    (
        "aten.empty.memory_format",
        "torch.empty",
        ["size"],
        sample([2, 3], dtype=torch_attr("float16"), memory_format=torch_attr("contiguous_format")),
    ),
    (
        "aten.empty_strided.default",
        "torch.empty_strided",
        ["size", "stride"],
        sample([2, 3], [1, 2], dtype=torch_attr("float64")),
    ),
    ("aten.eye.default", "torch.eye", ["n"], sample(3, dtype=torch_attr("bool"))),
    ("aten.arange.default", "torch.arange", ["end"], sample(5)),
    (
        "aten.arange.start",
        "torch.arange",
        ["start", "end"],
        sample(1, 4, dtype=torch_attr("float32")),
    ),
    ("aten.arange.start_step", "torch.arange", ["start", "end", "step"], sample(0.5, 3, 0.75)),
    ("aten.linspace.default", "torch.linspace", ["start", "end", "steps"], sample(-1, 2.0, 7)),
    (
        "aten.scalar_tensor.default",
        "torch.scalar_tensor",
        ["s"],
        sample(3, dtype=torch_attr("int64")),
    ),
    ("aten.zeros_like.default", "torch.zeros_like", ["self:input"], sample(randn(2, 3))),
    (
        "aten.ones_like.default",
        "torch.ones_like",
        ["self:input"],
        sample(randn(2, 3), dtype=torch_attr("int8")),
    ),
    (
        "aten.full_like.default",
        "torch.full_like",
        ["self:input", "fill_value"],
        sample(randint(0, 4, 2, 3), 2.5),
    ),
    (
        "aten.empty_like.default",
        "torch.empty_like",
        ["self:input"],
        sample(randn(2, 3), memory_format=torch_attr("preserve_format")),
    ),
]
for _target, _fn, _pos, _sample in _FUNCTIONS:
    register(_target, sample=_sample)(call_renderer(_fn, _pos, _OPTIONS))

_METHODS = [
    # target, tensor method, positional schema args after `self`, sample
    ("aten.new_zeros.default", "new_zeros", ["size"], sample(randn(2), [3, 1])),
    (
        "aten.new_ones.default",
        "new_ones",
        ["size"],
        sample(randn(2), [2, 2], dtype=torch_attr("int64")),
    ),
    ("aten.new_full.default", "new_full", ["size", "fill_value"], sample(randint(0, 3, 2), [3], 4)),
    ("aten.new_empty.default", "new_empty", ["size"], sample(randn(2), [2, 4])),
]
for _target, _name, _pos, _sample in _METHODS:
    register(_target, sample=_sample)(method_renderer(_name, _pos, _OPTIONS))


# -- fills ---------------------------------------------------------------------------------

register("aten.fill.Scalar", sample=sample(randn(2, 3), 1.5))(
    call_renderer("torch.fill", ["self:input", "value"])
)
register("aten.fill.Tensor", sample=sample(randint(0, 3, 2, 3), randn()))(
    call_renderer("torch.fill", ["self:input", "value"])
)
register("aten.fill_.Scalar", sample=sample(randn(2, 3), -1))(method_renderer("fill_", ["value"]))
register("aten.fill_.Tensor", sample=sample(randn(2, 3), randn()))(
    method_renderer("fill_", ["value"])
)
register("aten.zero_.default", sample=sample(randn(2, 3)))(method_renderer("zero_"))
