"""Reductions: sums, means, extrema, logical reductions, variance and norms.

Rendered as tensor methods (``x.sum([1], keepdim=True)``): each method binding has the
overloads' argument names, and ``keepdim``/``dtype`` read best by keyword.
"""

from __future__ import annotations

import functools

from pt2interp.ops._render import (
    call_renderer,
    method_renderer,
    positive,
    randbool,
    randint,
    randn,
    sample,
    torch_attr,
)
from pt2interp.ops.registry import register as _register

register = functools.partial(_register, family="reduction")


_REDUCTIONS = [
    # target, method, positional schema args, keyword schema args, sample
    (
        "aten.sum.dim_IntList",
        "sum",
        ["dim"],
        ["keepdim", "dtype"],
        sample(randint(0, 9, 2, 3, 4), [0, 2], True, dtype=torch_attr("float64")),
    ),
    ("aten.sum.default", "sum", [], ["dtype"], sample(randbool(3, 4))),
    ("aten.mean.dim", "mean", ["dim"], ["keepdim", "dtype"], sample(randn(2, 3, 4), [-1])),
    ("aten.mean.default", "mean", [], ["dtype"], sample(randn(3, 4))),
    ("aten.amax.default", "amax", ["dim"], ["keepdim"], sample(randn(2, 3, 4), [1, 2], True)),
    ("aten.amin.default", "amin", ["dim"], ["keepdim"], sample(randn(2, 3, 4))),
    ("aten.max.dim", "max", ["dim"], ["keepdim"], sample(randint(0, 3, 3, 4), 1)),
    ("aten.min.dim", "min", ["dim"], ["keepdim"], sample(randn(3, 4), 0, True)),
    ("aten.max.default", "max", [], [], sample(randn(3, 4))),
    ("aten.min.default", "min", [], [], sample(randn(3, 4))),
    ("aten.argmax.default", "argmax", ["dim"], ["keepdim"], sample(randn(3, 4), 1, True)),
    ("aten.argmin.default", "argmin", ["dim"], ["keepdim"], sample(randn(3, 4))),
    ("aten.any.dim", "any", ["dim"], ["keepdim"], sample(randbool(3, 4), 1)),
    ("aten.any.dims", "any", ["dim"], ["keepdim"], sample(randbool(2, 3, 4), [0, 2], True)),
    ("aten.any.default", "any", [], [], sample(randint(0, 2, 3, 4))),
    ("aten.all.dim", "all", ["dim"], ["keepdim"], sample(randbool(3, 4), 0, True)),
    ("aten.all.dims", "all", ["dim"], ["keepdim"], sample(randbool(2, 3, 4), [1])),
    ("aten.all.default", "all", [], [], sample(randbool(3, 4))),
    ("aten.prod.default", "prod", [], ["dtype"], sample(positive(3, 4))),
    (
        "aten.prod.dim_int",
        "prod",
        ["dim"],
        ["keepdim", "dtype"],
        sample(randint(-3, 3, 3, 4), 1, dtype=torch_attr("float32")),
    ),
    (
        "aten.var.correction",
        "var",
        ["dim"],
        ["correction", "keepdim"],
        sample(randn(3, 4), [1], correction=0, keepdim=True),
    ),
    ("aten.std.correction", "std", ["dim"], ["correction", "keepdim"], sample(randn(3, 4))),
    ("aten.logsumexp.default", "logsumexp", ["dim", "keepdim"], [], sample(randn(3, 4), [1])),
]
for _target, _name, _pos, _kw, _sample in _REDUCTIONS:
    register(_target, sample=_sample)(method_renderer(_name, _pos, _kw))

register("aten.var_mean.correction", sample=sample(randn(3, 4), [0], correction=2))(
    call_renderer("torch.var_mean", ["self:input", "dim"], ["correction", "keepdim"])
)
register("aten.linalg_vector_norm.default", sample=sample(randn(3, 4), 3, [1], dtype=None))(
    call_renderer("torch.linalg.vector_norm", ["self:x", "ord", "dim", "keepdim"], ["dtype"])
)


# Tensor.norm reaches torch.linalg.vector_norm, the kernel the `norm` overloads call too.
register("aten.norm.Scalar", sample=sample(randn(3, 4), 3))(method_renderer("norm", ["p"]))
register("aten.norm.ScalarOpt_dim", sample=sample(randn(3, 4), 1, [1], True))(
    method_renderer("norm", ["p", "dim"], ["keepdim"])
)
