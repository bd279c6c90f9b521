"""Python operators and sym-int helpers that export leaves in graphs.

Dynamic shapes make export record arithmetic on sizes as plain Python operators
(``_operator.mul``, ``math.trunc``, ``torch.sym_max``) and ``aten.sym_size`` calls. These are the
only non-``torch.ops`` targets pt2interp runs: a fixed table, never a name looked up at run time.
"""

from __future__ import annotations

import math
import operator

from pt2interp import limits
from pt2interp.ops.registry import Call, _wrap, register


def _sample_sizes(gen):
    import torch

    return (torch.randn(3, 5, generator=gen), 1), {}


@register("aten.sym_size.int", sample=_sample_sizes)
def _sym_size(c: Call) -> str:
    return f"{_wrap(c['self'])}.shape[{c['dim']}]"


@register("aten.sym_stride.int", sample=_sample_sizes)
def _sym_stride(c: Call) -> str:
    return f"{_wrap(c['self'])}.stride({c['dim']})"


@register(
    "aten.sym_numel.default", sample=lambda g: ((__import__("torch").randn(2, 3, generator=g),), {})
)
def _sym_numel(c: Call) -> str:
    return f"{_wrap(c['self'])}.numel()"


@register(
    "aten.sym_storage_offset.default",
    sample=lambda g: ((__import__("torch").randn(4, generator=g)[1:],), {}),
)
def _sym_storage_offset(c: Call) -> str:
    return f"{_wrap(c['self'])}.storage_offset()"


def _binary(symbol: str):
    return lambda c: f"{_wrap(c.positional[0])} {symbol} {_wrap(c.positional[1])}"


_BINARY = {
    "add": "+",
    "sub": "-",
    "mul": "*",
    "floordiv": "//",
    "truediv": "/",
    "mod": "%",
    "pow": "**",
    "eq": "==",
    "ne": "!=",
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
    "and_": "&",
    "or_": "|",
    "xor": "^",
    "lshift": "<<",
    "rshift": ">>",
}
# Sizes are int64: Python ints far beyond that come only from a hostile graph, and computing
# them (10 ** 10 ** 9, 1 << 10 ** 12, "x" * 10 ** 12) would hang or exhaust memory.
_MAX_INT_BITS = 256


def _too_big(what: str):
    return OverflowError(f"{what} is too large for a size computation (over {_MAX_INT_BITS} bits)")


def _pow(a, b):
    if type(a) is int and type(b) is int and abs(a) > 1 and b * abs(a).bit_length() > _MAX_INT_BITS:
        raise _too_big(f"{a} ** {b}")
    return operator.pow(a, b)


def _lshift(a, b):
    if type(a) is int and type(b) is int and a and b + a.bit_length() > _MAX_INT_BITS:
        raise _too_big(f"{a} << {b}")
    return operator.lshift(a, b)


_SEQUENCES = (str, bytes, list, tuple)


def _item_bytes(seq) -> int:
    """About how many bytes one item of ``seq`` costs (a list holds pointers)."""
    return 1 if isinstance(seq, (str, bytes)) else 8


def _mul(a, b):
    if type(a) is int and type(b) is int and a.bit_length() + b.bit_length() > _MAX_INT_BITS:
        raise _too_big(f"{a} * {b}")
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, _SEQUENCES) and type(n) is int:
            limits.charge_python_value(
                len(seq) * max(n, 0) * _item_bytes(seq),
                f"repeating a {type(seq).__name__} of {len(seq)} items {n} times",
            )
    return operator.mul(a, b)


def _add(a, b):
    if isinstance(a, _SEQUENCES) and isinstance(b, _SEQUENCES):
        limits.charge_python_value(
            (len(a) + len(b)) * _item_bytes(a),
            f"joining a {type(a).__name__} of {len(a)} items and one of {len(b)}",
        )
    return operator.add(a, b)


def _mod(a, b):
    if isinstance(a, (str, bytes)):  # printf-style formatting: widths allocate without bound
        raise TypeError("archive text is never used as a format string (% on a string)")
    return operator.mod(a, b)


_BOUNDED = {"pow": _pow, "lshift": _lshift, "mul": _mul, "add": _add, "mod": _mod}
for _name, _sym in _BINARY.items():
    register(
        f"_operator.{_name}",
        kernel=_BOUNDED.get(_name, getattr(operator, _name)),
        family="symbolic",
    )(_binary(_sym))

register("_operator.neg", kernel=operator.neg, family="symbolic")(
    lambda c: f"-{_wrap(c.positional[0])}"
)
register("_operator.pos", kernel=operator.pos, family="symbolic")(
    lambda c: f"+{_wrap(c.positional[0])}"
)
register("_operator.not_", kernel=operator.not_, family="symbolic")(
    lambda c: f"not {_wrap(c.positional[0])}"
)
register("_operator.abs", kernel=operator.abs, family="symbolic")(
    lambda c: f"abs({c.positional[0]})"
)
register("_operator.getitem", kernel=operator.getitem, family="symbolic")(
    lambda c: f"{_wrap(c.positional[0])}[{c.positional[1]}]"
)


def _call_render(func: str):
    return lambda c: f"{func}({', '.join(c.positional)})"


for _name in ("trunc", "ceil", "floor", "sqrt"):
    register(f"math.{_name}", kernel=getattr(math, _name), family="symbolic")(
        _call_render(f"math.{_name}")
    )


def _sym_fn(name: str):
    def kernel(*args):
        import torch

        return getattr(torch, name)(*args)

    return kernel


for _name in (
    "sym_float",
    "sym_int",
    "sym_max",
    "sym_min",
    "sym_not",
    "sym_sqrt",
    "sym_ite",
    "_sym_sqrt",
):
    register(f"torch.{_name}", kernel=_sym_fn(_name), family="symbolic")(
        _call_render(f"torch.{_name}")
    )


def _sym_sum(args):
    # torch.sym_sum adds a list of sizes in one node (torch 2.6 and later write it)
    return sum(args, 0)


register("torch.sym_sum", kernel=_sym_sum, family="symbolic")(lambda c: f"sum({c.positional[0]})")


def _symbool_as_int(b):
    return int(b)


# a bool size condition used as 0 or 1 (export writes it for `int(x.shape[0] > 2)`-style code)
register(
    "torch.fx.experimental.symbolic_shapes.cast_symbool_to_symint_guardless",
    kernel=_symbool_as_int,
    family="symbolic",
)(lambda c: f"int({c.positional[0]})")
