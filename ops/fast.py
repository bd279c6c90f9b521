"""Faster bindings for hot ops: Tensor methods that dispatch to the very same ATen overload.

Calling a ``torch.ops`` overload parses its arguments against the JIT schema, which costs about
a microsecond more per call than the Tensor method bindings. For graphs of many small ops (where
dispatch is everything) the interpreter calls the method instead, but only for the overloads
listed here, only when a node passes no keyword arguments, and each listed binding is proven by
``tests/test_fast_bindings.py`` to dispatch exactly the listed overload with the same arguments.
"""

from __future__ import annotations

# registry key -> torch.Tensor method with the same positional signature
FAST_METHODS: dict[str, str] = {
    "aten.add.Tensor": "add",
    "aten.sub.Tensor": "sub",
    "aten.mul.Tensor": "mul",
    "aten.div.Tensor": "div",
    "aten.add_.Tensor": "add_",
    "aten.mul_.Tensor": "mul_",
    "aten.neg.default": "neg",
    "aten.abs.default": "abs",
    "aten.exp.default": "exp",
    "aten.log.default": "log",
    "aten.sqrt.default": "sqrt",
    "aten.rsqrt.default": "rsqrt",
    "aten.sin.default": "sin",
    "aten.cos.default": "cos",
    "aten.tanh.default": "tanh",
    "aten.sigmoid.default": "sigmoid",
    "aten.relu.default": "relu",
    "aten.relu_.default": "relu_",
    "aten.reciprocal.default": "reciprocal",
    "aten.view.default": "view",
    "aten.reshape.default": "reshape",
    "aten.permute.default": "permute",
    "aten.transpose.int": "transpose",
    "aten.unsqueeze.default": "unsqueeze",
    "aten.t.default": "t",
    "aten.mm.default": "mm",
    "aten.bmm.default": "bmm",
    "aten.matmul.default": "matmul",
}


def fast_kernel(target: str, n_positional: int):
    """The Tensor method for ``target`` called with ``n_positional`` arguments, or None."""
    import torch

    name = FAST_METHODS.get(target.removeprefix("torch.ops."))
    if name is None or n_positional < 1:
        return None
    return getattr(torch.Tensor, name, None)
