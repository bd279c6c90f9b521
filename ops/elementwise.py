"""Elementwise ops: arithmetic, comparisons, logic, unary math, and dtype/device casts.

Python operators on tensors dispatch to the very overloads listed here (``a + b`` is
``aten.add.Tensor``, ``2 - x`` is ``aten.rsub.Scalar``, ``x ** 2`` is
``aten.pow.Tensor_Scalar``), so the operator spelling evaluates to exactly what the node ran.
"""

from __future__ import annotations

import functools

from pt2interp.ops._render import (
    call_renderer,
    cpu,
    infix_renderer,
    is_default,
    method,
    method_renderer,
    operand,
    positive,
    pycall,
    randbool,
    randint,
    randn,
    raw,
    sample,
    torch_attr,
    uniform,
    with_kw,
)
from pt2interp.ops.registry import Call, _wrap, infix, prefix
from pt2interp.ops.registry import register as _register

register = functools.partial(_register, family="elementwise")

_unary_sample = sample(randn(2, 3))
_binary_sample = sample(randn(2, 3), randn(3))
_tensor_scalar_sample = sample(randn(2, 3), 1.5)
_int_binary_sample = sample(randint(-8, 8, 2, 3), randint(1, 5, 3))


# -- + - * / -------------------------------------------------------------------------------


def _alpha_infix(symbol: str, fn: str):
    """``a + b``; ``torch.add(a, b, alpha=k)`` when the node scales ``other``."""

    def render(c: Call) -> str:
        if is_default(c, "alpha"):
            return infix(c, symbol)
        return pycall(c, f"torch.{fn}", ["self:input", "other"], ["alpha"])

    return render


def _rsub(c: Call) -> str:
    """``rsub(x, y) = y - alpha * x``: ``2 - x`` is what Python writes for ``rsub.Scalar``."""
    if is_default(c, "alpha"):
        return infix(c, "-", left="other", right="self")
    return pycall(c, "torch.rsub", ["self:input", "other"], ["alpha"])


# In-place arithmetic returns its receiver: `x.add_(y)`, `x.add_(y, alpha=k)`.
_add_ = method_renderer("add_", ["other"], ["alpha"])
_sub_ = method_renderer("sub_", ["other"], ["alpha"])

_ARITHMETIC = [
    # target, renderer, sample
    ("aten.add.Tensor", _alpha_infix("+", "add"), sample(randn(2, 3), randn(3))),
    ("aten.add.Scalar", _alpha_infix("+", "add"), sample(randint(0, 5, 4), 2.5)),
    ("aten.sub.Tensor", _alpha_infix("-", "sub"), sample(randn(2, 3), randn(2, 3), alpha=2)),
    ("aten.sub.Scalar", _alpha_infix("-", "sub"), sample(randn(3), -2)),
    ("aten.rsub.Scalar", _rsub, sample(randn(2, 3), 1.0)),
    ("aten.rsub.Tensor", _rsub, sample(randn(2, 3), randn(3), alpha=3)),
    ("aten.add_.Tensor", _add_, sample(randn(2, 3), randn(3), alpha=0.5)),
    ("aten.add_.Scalar", _add_, sample(randn(2, 3), 3)),
    ("aten.sub_.Tensor", _sub_, sample(randn(2, 3), randn(2, 3))),
    ("aten.sub_.Scalar", _sub_, sample(randn(2, 3), 0.25)),
    ("aten.mul.Tensor", infix_renderer("*"), _binary_sample),
    ("aten.mul.Scalar", infix_renderer("*"), _tensor_scalar_sample),
    ("aten.div.Tensor", infix_renderer("/"), sample(randint(-9, 9, 2, 3), randint(1, 4, 3))),
    ("aten.div.Scalar", infix_renderer("/"), sample(randn(2, 3), 4)),
    ("aten.remainder.Tensor", infix_renderer("%"), _int_binary_sample),
    ("aten.remainder.Scalar", infix_renderer("%"), sample(randn(2, 3), 0.75)),
    ("aten.remainder.Scalar_Tensor", infix_renderer("%"), sample(7, randint(1, 5, 4))),
    ("aten.floor_divide.default", infix_renderer("//"), _int_binary_sample),
    ("aten.mul_.Tensor", method_renderer("mul_", ["other"]), _binary_sample),
    ("aten.mul_.Scalar", method_renderer("mul_", ["other"]), _tensor_scalar_sample),
    ("aten.div_.Tensor", method_renderer("div_", ["other"]), _binary_sample),
    ("aten.div_.Scalar", method_renderer("div_", ["other"]), _tensor_scalar_sample),
    (
        "aten.div.Tensor_mode",
        call_renderer("torch.div", ["self:input", "other"], ["rounding_mode"]),
        sample(randn(2, 3), randn(3), rounding_mode="floor"),
    ),
    (
        "aten.div.Scalar_mode",
        call_renderer("torch.div", ["self:input", "other"], ["rounding_mode"]),
        sample(randint(-9, 9, 5), 2, rounding_mode="trunc"),
    ),
    (
        "aten.div_.Tensor_mode",
        method_renderer("div_", ["other"], ["rounding_mode"]),
        sample(randn(2, 3), randn(3), rounding_mode="floor"),
    ),
]
for _target, _render, _sample in _ARITHMETIC:
    register(_target, sample=_sample)(_render)


def _power(c: Call) -> str:
    # `-2 ** x` would be `-(2 ** x)`: negative literal bases get parentheses.
    return f"{operand(c['self'])} ** {_wrap(c['exponent'])}"


register("aten.pow.Tensor_Scalar", sample=sample(randn(2, 3), 2))(_power)
register("aten.pow.Tensor_Tensor", sample=sample(positive(2, 3), randn(3)))(_power)
register("aten.pow.Scalar", sample=sample(-2, randint(0, 4, 2, 3)))(_power)
register("aten.pow_.Scalar", sample=sample(randn(2, 3), 3))(method_renderer("pow_", ["exponent"]))

# Binary ops spelled `torch.<fn>(a, b)`.
_BINARY_FUNCTIONS = [
    ("aten.fmod.Scalar", "torch.fmod", sample(randn(2, 3), 0.5)),
    ("aten.fmod.Tensor", "torch.fmod", _int_binary_sample),
    ("aten.minimum.default", "torch.minimum", _binary_sample),
    ("aten.maximum.default", "torch.maximum", _binary_sample),
    ("aten.min.other", "torch.min", _binary_sample),
    ("aten.max.other", "torch.max", _binary_sample),
    ("aten.atan2.default", "torch.atan2", _binary_sample),
    ("aten.logical_and.default", "torch.logical_and", sample(randbool(2, 3), randbool(3))),
    ("aten.logical_or.default", "torch.logical_or", sample(randbool(2, 3), randbool(3))),
    ("aten.logical_xor.default", "torch.logical_xor", sample(randbool(2, 3), randbool(3))),
]
for _target, _fn, _sample in _BINARY_FUNCTIONS:
    register(_target, sample=_sample)(call_renderer(_fn, ["self:input", "other"]))


# -- comparisons and bitwise: Python operators ---------------------------------------------

_COMPARISONS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
for _name, _symbol in _COMPARISONS.items():
    register(f"aten.{_name}.Tensor", sample=sample(randint(0, 3, 2, 3), randint(0, 3, 3)))(
        infix_renderer(_symbol)
    )
    register(f"aten.{_name}.Scalar", sample=sample(randint(0, 3, 2, 3), 1))(infix_renderer(_symbol))

_BITWISE = {
    "aten.bitwise_and.Tensor": "&",
    "aten.__and__.Tensor": "&",
    "aten.bitwise_and.Scalar": "&",
    "aten.bitwise_or.Tensor": "|",
    "aten.__or__.Tensor": "|",
    "aten.bitwise_or.Scalar": "|",
    "aten.bitwise_xor.Tensor": "^",
    "aten.__xor__.Tensor": "^",
}


for _target, _symbol in _BITWISE.items():
    _other = randint(0, 16, 3) if _target.endswith(".Tensor") else 6
    register(_target, sample=sample(randint(0, 16, 2, 3), _other))(infix_renderer(_symbol))

register("aten.bitwise_not.default", sample=sample(randint(-5, 5, 2, 3)))(lambda c: prefix(c, "~"))
register("aten.neg.default", sample=_unary_sample)(lambda c: prefix(c, "-"))


# -- unary math: torch.<name>(x) -----------------------------------------------------------

# Ops whose torch function has the op's name. Functions defined on part of the line (log,
# sqrt, asin, ...) get samples inside their domain, so NaNs do not hide mismatches.
_UNARY = [
    "abs",
    "exp",
    "exp2",
    "expm1",
    "sin",
    "cos",
    "tan",
    "sinh",
    "cosh",
    "atan",
    "erf",
    "floor",
    "ceil",
    "round",
    "trunc",
    "sign",
    "sgn",
    "sigmoid",
    "tanh",
    "reciprocal",
    "isnan",
    "isinf",
    "isfinite",
    "logical_not",
]
_UNARY_POSITIVE = ["log", "log1p", "log2", "log10", "sqrt", "rsqrt"]
_UNARY_UNIT_INTERVAL = ["asin", "acos"]
# In-place forms the default export keeps: `x.sigmoid_()`.
_UNARY_INPLACE = ["sigmoid_", "tanh_", "exp_", "neg_", "abs_", "sqrt_", "rsqrt_", "reciprocal_"]


def _unary_sample_for(name: str):
    if name.rstrip("_") in _UNARY_POSITIVE:
        return sample(positive(2, 3))
    if name in _UNARY_UNIT_INTERVAL:
        return sample(uniform(-0.9, 0.9, 2, 3))
    return _unary_sample


for _name in _UNARY + _UNARY_POSITIVE + _UNARY_UNIT_INTERVAL:
    register(f"aten.{_name}.default", sample=_unary_sample_for(_name))(
        call_renderer(f"torch.{_name}", ["self:input"])
    )
for _name in _UNARY_INPLACE:
    register(f"aten.{_name}.default", sample=_unary_sample_for(_name))(method_renderer(_name))

register("aten.round.decimals", sample=sample(randn(2, 3), decimals=2))(
    call_renderer("torch.round", ["self:input"], ["decimals"])
)
register("aten.clamp.default", sample=sample(randn(2, 3), -0.5, 0.5))(
    call_renderer("torch.clamp", ["self:input", "min", "max"])
)
register("aten.clamp.Tensor", sample=sample(randn(2, 3), None, randn(3)))(
    call_renderer("torch.clamp", ["self:input", "min", "max"])
)
register("aten.clamp_.default", sample=sample(randn(2, 3), None, 0.25))(
    method_renderer("clamp_", ["min", "max"])
)
register("aten.clamp_min.default", sample=sample(randn(2, 3), 0.0))(
    call_renderer("torch.clamp_min", ["self:input", "min"])
)
register("aten.clamp_max.default", sample=sample(randn(2, 3), 0.0))(
    call_renderer("torch.clamp_max", ["self:input", "max"])
)
register("aten.lerp.Scalar", sample=sample(randn(2, 3), randn(2, 3), 0.3))(
    call_renderer("torch.lerp", ["self:input", "end", "weight"])
)
register("aten.lerp.Tensor", sample=sample(randn(2, 3), randn(2, 3), randn(3)))(
    call_renderer("torch.lerp", ["self:input", "end", "weight"])
)


# -- casts ---------------------------------------------------------------------------------


def _plain_layout(c: Call) -> bool:
    """Layout and pin_memory at the values ``Tensor.to`` implies (it takes neither)."""
    return c.get("layout", "None").strip() in ("None", "torch.strided") and c.get(
        "pin_memory", "None"
    ).strip() in ("None", "False")


@register("aten._to_copy.default", sample=sample(randn(2, 3), dtype=torch_attr("float64")))
def _to_copy(c: Call) -> str:
    if not _plain_layout(c):
        return raw(c)
    # `copy=True` keeps `_to_copy`'s fresh tensor even when dtype and device already match.
    return with_kw(
        method(c, "to", kw=["dtype", "device", "non_blocking", "memory_format"]), "copy=True"
    )


@register(
    "aten.to.dtype_layout",
    sample=sample(
        randn(2, 3), dtype=torch_attr("bfloat16"), layout=torch_attr("strided"), device=cpu
    ),
)
def _to_dtype_layout(c: Call) -> str:
    if not _plain_layout(c):
        return raw(c)
    return method(c, "to", kw=["dtype", "device", "non_blocking", "copy", "memory_format"])


register("aten.to.dtype", sample=sample(randn(2, 3), torch_attr("int32")))(
    method_renderer("to", ["dtype", "non_blocking", "copy"], ["memory_format"])
)
register("aten.to.device", sample=sample(randn(2, 3), cpu, torch_attr("float16")))(
    method_renderer("to", ["device", "dtype", "non_blocking", "copy"], ["memory_format"])
)
register("aten.type_as.default", sample=sample(randn(2, 3), randint(0, 3, 1)))(
    method_renderer("type_as", ["other"])
)
# Returns None after checking metadata; the public binding runs the same check.
register(
    "aten._assert_tensor_metadata.default",
    sample=sample(randn(2, 3), None, None, torch_attr("float32"), device=cpu),
)(
    call_renderer(
        "torch._assert_tensor_metadata", ["a", "size", "stride", "dtype"], ["device", "layout"]
    )
)


@register("aten.copy.default", sample=sample(randn(2, 3), randint(0, 5, 3)))
def _copy(c: Call) -> str:
    # The functional copy: a fresh tensor shaped and typed like `self`, holding `src`.
    return pycall(c, f"{_wrap(c['self'])}.clone().copy_", ["src", "non_blocking"])


register("aten.copy_.default", sample=sample(randn(2, 3), randint(0, 5, 3)))(
    method_renderer("copy_", ["src", "non_blocking"])
)
