"""Views, reshapes, joins and splits.

The tensor-method spellings (``x.view(s)``, ``x.permute(d)``) call these overloads directly.
Ops returning ``Tensor[]`` return a *list* from ``torch.ops`` while the Python functions
return tuples, hence the ``list(...)`` around ``torch.split`` and friends.
"""

from __future__ import annotations

import functools

from pt2interp.ops._render import call_renderer, method_renderer, randn, sample, torch_attr
from pt2interp.ops.registry import _wrap
from pt2interp.ops.registry import register as _register

register = functools.partial(_register, family="shape")

_METHODS = [
    # target, method, positional schema args, sample
    ("aten.view.default", "view", ["size"], sample(randn(2, 6), [3, 4])),
    ("aten.view.dtype", "view", ["dtype"], sample(randn(2, 4), torch_attr("int32"))),
    # `_unsafe_view` is `view` without autograd's view tracking; same values, same storage.
    ("aten._unsafe_view.default", "view", ["size"], sample(randn(2, 6), [4, -1])),
    ("aten.reshape.default", "reshape", ["shape"], sample(randn(2, 6), [3, 2, 2])),
    ("aten.flatten.using_ints", "flatten", ["start_dim", "end_dim"], sample(randn(2, 3, 4), 1)),
    ("aten.unflatten.int", "unflatten", ["dim", "sizes"], sample(randn(2, 6), 1, [2, 3])),
    ("aten.permute.default", "permute", ["dims"], sample(randn(2, 3, 4), [2, 0, 1])),
    ("aten.transpose.int", "transpose", ["dim0", "dim1"], sample(randn(2, 3, 4), 0, -1)),
    ("aten.t.default", "t", [], sample(randn(2, 3))),
    ("aten.expand_as.default", "expand_as", ["other"], sample(randn(3, 1), randn(3, 4))),
    ("aten.squeeze.dim", "squeeze", ["dim"], sample(randn(2, 1, 3), 1)),
    ("aten.squeeze.dims", "squeeze", ["dim"], sample(randn(1, 2, 1, 3), [0, 2])),
    ("aten.squeeze.default", "squeeze", [], sample(randn(1, 2, 1))),
    ("aten.unsqueeze.default", "unsqueeze", ["dim"], sample(randn(2, 3), -1)),
    ("aten.detach.default", "detach", [], sample(randn(2, 3))),
    ("aten.view_as.default", "view_as", ["other"], sample(randn(2, 6), randn(3, 4))),
    ("aten.narrow.default", "narrow", ["dim", "start", "length"], sample(randn(4, 5), 1, 1, 3)),
    ("aten.repeat.default", "repeat", ["repeats"], sample(randn(2, 3), [2, 1, 2])),
    ("aten.unfold.default", "unfold", ["dimension", "size", "step"], sample(randn(2, 7), 1, 3, 2)),
    (
        "aten.as_strided.default",
        "as_strided",
        ["size", "stride", "storage_offset"],
        sample(randn(4, 4), [2, 2], [1, 2], 1),
    ),
]
for _target, _name, _pos, _sample in _METHODS:
    register(_target, sample=_sample)(method_renderer(_name, _pos))

register("aten.expand.default", sample=sample(randn(3, 1), [2, 3, 4]))(
    method_renderer("expand", ["size"], ["implicit"])
)
register(
    "aten.contiguous.default",
    sample=sample(lambda g: randn(3, 2)(g).t(), memory_format=torch_attr("contiguous_format")),
)(method_renderer("contiguous", kw=["memory_format"]))
register("aten.clone.default", sample=sample(randn(2, 3)))(
    method_renderer("clone", kw=["memory_format"])
)
# `lift_fresh_copy` copies a constant into the graph: a clone.
register("aten.lift_fresh_copy.default", sample=sample(randn(2, 3)))(method_renderer("clone"))
# `alias` is a fresh view of the whole tensor: what `x[...]` returns.
register("aten.alias.default", sample=sample(randn(2, 3)))(lambda c: f"{_wrap(c['self'])}[...]")

_FUNCTIONS = [
    # target, torch function, positional schema args (`schema:python` where names differ)
    (
        "aten.movedim.int",
        "torch.movedim",
        ["self:input", "source", "destination"],
        sample(randn(2, 3, 4), 0, -1),
    ),
    (
        "aten.movedim.intlist",
        "torch.movedim",
        ["self:input", "source", "destination"],
        sample(randn(2, 3, 4), [0, 1], [2, 0]),
    ),
    ("aten.cat.default", "torch.cat", ["tensors", "dim"], sample([randn(2, 3), randn(1, 3)])),
    (
        "aten.stack.default",
        "torch.stack",
        ["tensors", "dim"],
        sample([randn(2, 3), randn(2, 3)], 1),
    ),
    ("aten.tile.default", "torch.tile", ["self:input", "dims"], sample(randn(2, 3), [2])),
]
for _target, _fn, _pos, _sample in _FUNCTIONS:
    register(_target, sample=_sample)(call_renderer(_fn, _pos))

register("aten.repeat_interleave.self_int", sample=sample(randn(2, 3), 2, 1))(
    call_renderer("torch.repeat_interleave", ["self:input", "repeats", "dim"], ["output_size"])
)


def _as_list(fn: str, pos):
    """``list(torch.split(...))``: the overload returns a list, the Python function a tuple."""
    inner = call_renderer(fn, pos)
    return lambda c: f"list({inner(c)})"


_SPLITS = [
    (
        "aten.split.Tensor",
        "torch.split",
        ["self:tensor", "split_size:split_size_or_sections", "dim"],
        sample(randn(5, 2), 2),
    ),
    (
        "aten.split_with_sizes.default",
        "torch.split",
        ["self:tensor", "split_sizes:split_size_or_sections", "dim"],
        sample(randn(2, 6), [1, 3, 2], 1),
    ),
    ("aten.unbind.int", "torch.unbind", ["self:input", "dim"], sample(randn(2, 3), 1)),
    ("aten.chunk.default", "torch.chunk", ["self:input", "chunks", "dim"], sample(randn(5, 2), 3)),
]
for _target, _fn, _pos, _sample in _SPLITS:
    register(_target, sample=_sample)(_as_list(_fn, _pos))
