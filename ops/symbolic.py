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
for _name, _sym in _BINARY.items():
    register(f"_operator.{_name}", kernel=getattr(operator, _name), family="symbolic")(_binary(_sym))

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
