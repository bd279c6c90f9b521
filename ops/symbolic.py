"""Python operators and sym-int helpers that export leaves in graphs.

Dynamic shapes make export record arithmetic on sizes as plain Python operators
(``_operator.mul``, ``math.trunc``, ``torch.sym_max``) and ``aten.sym_size`` calls. These are the
only non-``torch.ops`` targets pt2interp runs: a fixed table, never a name looked up at run time.
"""

from __future__ import annotations

import math
import operator

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


@register("aten.sym_numel.default", sample=lambda g: ((__import__("torch").randn(2, 3, generator=g),), {}))
def _sym_numel(c: Call) -> str:
    return f"{_wrap(c['self'])}.numel()"


@register("aten.sym_storage_offset.default", sample=lambda g: ((__import__("torch").randn(4, generator=g)[1:],), {}))
def _sym_storage_offset(c: Call) -> str:
    return f"{_wrap(c['self'])}.storage_offset()"


def _binary(symbol: str):
    return lambda c: f"{_wrap(c.positional[0])} {symbol} {_wrap(c.positional[1])}"


_BINARY = {
    "add": "+", "sub": "-", "mul": "*", "floordiv": "//", "truediv": "/", "mod": "%", "pow": "**",
    "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "and_": "&", "or_": "|",
    "xor": "^", "lshift": "<<", "rshift": ">>",
}
# Sizes are int64: Python ints far beyond that come only from a hostile graph, and computing
# them (10 ** 10 ** 9, 1 << 10 ** 12, "x" * 10 ** 12) would hang or exhaust memory.
_MAX_INT_BITS = 256
_MAX_REPEAT = 1 << 24


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


def _mul(a, b):
    if type(a) is int and type(b) is int and a.bit_length() + b.bit_length() > _MAX_INT_BITS:
        raise _too_big(f"{a} * {b}")
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, (str, bytes, list, tuple)) and type(n) is int and len(seq) * n > _MAX_REPEAT:
            raise OverflowError(f"repeating a sequence of {len(seq)} items {n} times is too large")
    return operator.mul(a, b)


_BOUNDED = {"pow": _pow, "lshift": _lshift, "mul": _mul}
for _name, _sym in _BINARY.items():
    register(f"_operator.{_name}", kernel=_BOUNDED.get(_name, getattr(operator, _name)),
             family="symbolic")(_binary(_sym))

register("_operator.neg", kernel=operator.neg, family="symbolic")(lambda c: f"-{_wrap(c.positional[0])}")
register("_operator.pos", kernel=operator.pos, family="symbolic")(lambda c: f"+{_wrap(c.positional[0])}")
register("_operator.not_", kernel=operator.not_, family="symbolic")(lambda c: f"not {_wrap(c.positional[0])}")
register("_operator.abs", kernel=operator.abs, family="symbolic")(lambda c: f"abs({c.positional[0]})")
register("_operator.getitem", kernel=operator.getitem, family="symbolic")(
    lambda c: f"{_wrap(c.positional[0])}[{c.positional[1]}]")

def _call_render(func: str):
    return lambda c: f"{func}({', '.join(c.positional)})"


for _name in ("trunc", "ceil", "floor", "sqrt"):
    register(f"math.{_name}", kernel=getattr(math, _name), family="symbolic")(_call_render(f"math.{_name}"))


def _sym_fn(name: str):
    def kernel(*args):
        import torch

        return getattr(torch, name)(*args)

    return kernel


for _name in ("sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_sqrt", "sym_ite", "_sym_sqrt"):
    register(f"torch.{_name}", kernel=_sym_fn(_name), family="symbolic")(_call_render(f"torch.{_name}"))
