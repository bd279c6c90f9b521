"""Slicing, indexing, scatter/gather, masking, sorting and triangular masks.

Subscripts (``x[:, 1:3]``, ``x[..., 0]``, ``x[idx]``) are how Python writes ``slice``,
``select`` and ``index``; they need the dimension as a literal, so a node whose ``dim`` is
not one reads as the overload itself.
"""

from __future__ import annotations

import functools

from pt2interp.ops._render import (
    INT64_MAX,
    call_renderer,
    int_literal,
    method,
    method_renderer,
    perm,
    randbool,
    randint,
    randn,
    raw,
    sample,
    split_list,
    uniform,
)
from pt2interp.ops.registry import Call, _wrap
from pt2interp.ops.registry import register as _register

register = functools.partial(_register, family="indexing")


def _subscript(c: Call, dim: int, item: str) -> str:
    """``x[:, :, item]`` for a non-negative ``dim``, ``x[..., item, :]`` for a negative one."""
    if dim >= 0:
        items = [":"] * dim + [item]
    else:
        items = ["..."] + [item] + [":"] * (-dim - 1)
    return f"{_wrap(c['self'])}[{', '.join(items)}]"


def _bound(c: Call, name: str, omit: tuple[str, ...]) -> str:
    """A slice bound's text, empty when absent or at a value the slice syntax implies."""
    text = c.get(name, omit[0]).strip()
    return "" if text in omit else text


@register("aten.slice.Tensor", sample=sample(randn(4, 6), 1, 1, 5, 2))
def _slice(c: Call) -> str:
    dim = int_literal(c.get("dim", "0"))
    if dim is None:
        return raw(c)
    start = _bound(c, "start", ("None", "0"))
    end = _bound(c, "end", ("None", str(INT64_MAX)))
    step = _bound(c, "step", ("1",))
    return _subscript(c, dim, f"{start}:{end}" + (f":{step}" if step else ""))


@register("aten.select.int", sample=sample(randn(3, 4, 2), -2, 1))
def _select(c: Call) -> str:
    dim = int_literal(c["dim"])
    return raw(c) if dim is None else _subscript(c, dim, c["index"])


@register("aten.index.Tensor", sample=sample(randn(4, 5, 3), [None, randint(0, 5, 2, 2)]))
def _index(c: Call) -> str:
    # `None` in `indices` keeps a dimension (`:`), unlike `None` in a subscript (a new axis).
    # Caveat: a subscript reads a 0-dim integer tensor as a plain int and returns a view where
    # the overload returns a copy (same values; differs only if the result is later mutated).
    items = split_list(c["indices"])
    if not items or all(i == "None" for i in items):  # nothing to index with: keep the op
        return raw(c)
    return f"{_wrap(c['self'])}[{', '.join(':' if i == 'None' else i for i in items)}]"


@register("aten.index_put.default", sample=sample(randn(4, 3), [perm(4)], randn(4, 3), True))
@register(
    "aten.index_put_.default", sample=sample(randn(4, 3), [None, randint(0, 3, 2)], randn(4, 2))
)
def _index_put(c: Call) -> str:
    # The Python bindings take no `None` (a kept dimension) in `indices`; only a list shown
    # to hold none reads as the method.
    items = split_list(c["indices"])
    if items is None or "None" in items:
        return raw(c)
    name = c.target.split(".")[1]
    return method(c, name, ["indices", "values", "accumulate"])


_METHODS = [
    # target, method, positional schema args, keyword-only schema args, sample
    (
        "aten.index_select.default",
        "index_select",
        ["dim", "index"],
        [],
        sample(randn(4, 3), 0, randint(0, 4, 5)),
    ),
    (
        "aten.gather.default",
        "gather",
        ["dim", "index"],
        ["sparse_grad"],
        sample(randn(3, 4), 1, randint(0, 4, 3, 2)),
    ),
    (
        "aten.scatter.src",
        "scatter",
        ["dim", "index", "src"],
        [],
        sample(randn(3, 5), 1, lambda g: perm(5)(g)[:2].expand(3, 2), randn(3, 2)),
    ),
    (
        "aten.scatter.value",
        "scatter",
        ["dim", "index", "value"],
        [],
        sample(randn(3, 5), 1, lambda g: perm(5)(g)[:2].expand(3, 2), 2.5),
    ),
    (
        "aten.scatter_add.default",
        "scatter_add",
        ["dim", "index", "src"],
        [],
        sample(randn(3, 5), 1, randint(0, 5, 3, 4), randn(3, 4)),
    ),
    (
        "aten.index_add.default",
        "index_add",
        ["dim", "index", "source"],
        ["alpha"],
        sample(randn(4, 3), 0, randint(0, 4, 5), randn(5, 3)),
    ),
    (
        "aten.index_copy.default",
        "index_copy",
        ["dim", "index", "source"],
        [],
        sample(randn(4, 3), 0, lambda g: perm(4)(g)[:2], randn(2, 3)),
    ),
    (
        "aten.masked_fill.Scalar",
        "masked_fill",
        ["mask", "value"],
        [],
        sample(randn(2, 3), randbool(3), -1.0),
    ),
    (
        "aten.masked_fill.Tensor",
        "masked_fill",
        ["mask", "value"],
        [],
        sample(randn(2, 3), randbool(2, 3), randn()),
    ),
    (
        "aten.masked_fill_.Scalar",
        "masked_fill_",
        ["mask", "value"],
        [],
        sample(randn(2, 3), randbool(2, 3), 0.0),
    ),
    (
        "aten.masked_fill_.Tensor",
        "masked_fill_",
        ["mask", "value"],
        [],
        sample(randn(2, 3), randbool(2, 3), randn()),
    ),
    (
        "aten.masked_scatter.default",
        "masked_scatter",
        ["mask", "source"],
        [],
        sample(randn(2, 3), randbool(2, 3), randn(6)),
    ),
]
for _target, _name, _pos, _kw, _sample in _METHODS:
    register(_target, sample=_sample)(method_renderer(_name, _pos, _kw))

_FUNCTIONS = [
    # target, torch function, positional schema args, keyword schema args, sample
    (
        "aten.slice_scatter.default",
        "torch.slice_scatter",
        ["self:input", "src", "dim", "start", "end", "step"],
        [],
        sample(randn(4, 6), randn(4, 2), 1, 1, 5, 2),
    ),
    (
        "aten.select_scatter.default",
        "torch.select_scatter",
        ["self:input", "src", "dim", "index"],
        [],
        sample(randn(3, 4), randn(3), 1, -1),
    ),
    (
        "aten.where.self",
        "torch.where",
        ["condition", "self:input", "other"],
        [],
        sample(randbool(2, 3), randn(2, 3), randn(3)),
    ),
    (
        "aten.where.ScalarOther",
        "torch.where",
        ["condition", "self:input", "other"],
        [],
        sample(randbool(2, 3), randn(2, 3), 0.0),
    ),
    (
        "aten.where.ScalarSelf",
        "torch.where",
        ["condition", "self:input", "other"],
        [],
        sample(randbool(2, 3), -1, randint(0, 5, 2, 3)),
    ),
    (
        "aten.where.Scalar",
        "torch.where",
        ["condition", "self:input", "other"],
        [],
        sample(randbool(2, 3), 1.0, 0),
    ),
    ("aten.nonzero.default", "torch.nonzero", ["self:input"], [], sample(randint(0, 2, 3, 4))),
    (
        "aten.topk.default",
        "torch.topk",
        ["self:input", "k", "dim"],
        ["largest", "sorted"],
        sample(randn(3, 5), 2, 0, False),
    ),
    (
        "aten.sort.default",
        "torch.sort",
        ["self:input", "dim"],
        ["descending"],
        sample(randint(0, 4, 3, 5), 0, True),
    ),
    (
        "aten.sort.stable",
        "torch.sort",
        ["self:input"],
        ["stable", "dim", "descending"],
        sample(randint(0, 4, 3, 5), stable=True, dim=0),
    ),
    (
        "aten.argsort.default",
        "torch.argsort",
        ["self:input", "dim"],
        ["descending"],
        sample(randn(3, 5), 1, True),
    ),
    (
        "aten.argsort.stable",
        "torch.argsort",
        ["self:input"],
        ["stable", "dim", "descending"],
        sample(randint(0, 3, 6), stable=True),
    ),
    (
        "aten.roll.default",
        "torch.roll",
        ["self:input", "shifts", "dims"],
        [],
        sample(randn(3, 4), [1, -1], [0, 1]),
    ),
    ("aten.flip.default", "torch.flip", ["self:input", "dims"], [], sample(randn(3, 4), [1])),
    (
        "aten.diff.default",
        "torch.diff",
        ["self:input", "n", "dim", "prepend", "append"],
        [],
        sample(randn(3, 4), 1, 0, randn(1, 4)),
    ),
    ("aten.tril.default", "torch.tril", ["self:input", "diagonal"], [], sample(randn(4, 4), -1)),
    ("aten.triu.default", "torch.triu", ["self:input", "diagonal"], [], sample(randn(4, 4))),
    (
        "aten.cumsum.default",
        "torch.cumsum",
        ["self:input", "dim"],
        ["dtype"],
        sample(randint(0, 5, 3, 4), 1, dtype=None),
    ),
    (
        "aten.cumprod.default",
        "torch.cumprod",
        ["self:input", "dim"],
        ["dtype"],
        sample(uniform(0.5, 1.5, 3, 4), 0),
    ),
]
for _target, _fn, _pos, _kw, _sample in _FUNCTIONS:
    register(_target, sample=_sample)(call_renderer(_fn, _pos, _kw))
