"""Symbolic dimension expressions, parsed without sympy and without ``eval``.

Archives store dynamic sizes as expression strings. Torch up to 2.5 wrote ``str(expr)``
(``s0``, ``2*s0 + 1``); 2.6 and later write sympy's ``srepr``
(``Mul(Integer(2), Symbol('s77', positive=True, integer=True))``). Both are parsed here with
:mod:`ast` (which only parses, never runs) into a small tree that can be evaluated against a
binding of symbols to ints and printed back as readable Python.

>>> e = parse_expr("Add(Mul(Integer(2), Symbol('s0', integer=True)), Integer(1))")
>>> e.evaluate({"s0": 3}), str(e), sorted(e.symbols())
(7, '2*s0 + 1', ['s0'])
>>> parse_expr("s0*s1").evaluate({"s0": 2, "s1": 5})
10
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from pt2interp.errors import SchemaError

_MAX_EXPR_CHARS = 10_000
_MAX_DEPTH = 64
# Sizes are int64 in torch; a literal far beyond that is no real coefficient. Bounded here, every
# literal prints in a few dozen digits (str() of an int has a 4300-digit limit, and hex literals
# of 10,000 characters would pass ast.parse).
_MAX_LITERAL_BITS = 128
# Every value evaluate() computes stays below this many bits (a product of many literals, a
# power), so results print and compare in bounded time.
_MAX_VALUE_BITS = 4096


@dataclass(frozen=True)
class Expr:
    """A node of a symbolic integer expression: ``op`` is ``sym``, ``int``, or an operator."""

    op: str
    args: tuple = ()
    value: int | str | None = None

    def symbols(self) -> set[str]:
        if self.op == "sym":
            return {self.value}
        out: set[str] = set()
        for a in self.args:
            out |= a.symbols()
        return out

    def evaluate(self, env: dict[str, int]) -> int:
        """Value of the expression with every symbol bound in ``env``."""
        op = self.op
        if op == "int":
            return self.value
        if op == "sym":
            try:
                return env[self.value]
            except KeyError:
                raise KeyError(self.value) from None
        vals = [a.evaluate(env) for a in self.args]
        if op == "add":
            return self._bounded(sum(vals), env)
        if op == "mul":
            out = 1
            for v in vals:
                out = self._bounded(out * v, env)
            return out
        if op == "neg":
            return -vals[0]
        if op == "sub":
            return self._bounded(vals[0] - vals[1], env)
        if op in ("floordiv", "mod"):
            if vals[1] == 0:
                raise EvaluationError(f"{self} divides by zero for {_binding(self, env)}")
            return vals[0] // vals[1] if op == "floordiv" else vals[0] % vals[1]
        if op == "pow":
            base, exp = vals[0], vals[1]
            if abs(base) > 1 and exp > 0 and exp * abs(base).bit_length() > _MAX_VALUE_BITS:
                raise self._too_large(env)
            return base**exp
        if op == "max":
            return max(vals)
        if op == "min":
            return min(vals)
        if op in _COMPARE:
            return _COMPARE[op](vals[0], vals[1])
        if op == "and":
            return all(vals)
        if op == "or":
            return any(vals)
        if op == "not":
            return not vals[0]
        if op == "abs":
            return abs(vals[0])
        if op == "ceildiv":
            if vals[1] == 0:
                raise EvaluationError(f"{self} divides by zero for {_binding(self, env)}")
            return -(-vals[0] // vals[1])
        raise AssertionError(op)

    def _bounded(self, value: int, env: dict[str, int]) -> int:
        if value.bit_length() > _MAX_VALUE_BITS:
            raise self._too_large(env)
        return value

    def _too_large(self, env: dict[str, int]) -> EvaluationError:
        return EvaluationError(
            f"{self} is too large to evaluate for {_binding(self, env)} "
            f"(over {_MAX_VALUE_BITS} bits)"
        )

    def as_symbol(self) -> str | None:
        """The symbol's name when the expression is a bare symbol, else None."""
        return self.value if self.op == "sym" else None

    def __str__(self) -> str:
        return _render(self, 0)


class EvaluationError(SchemaError):
    """An expression has no value for the given symbols: a division by zero, or a value too
    large to compute (a file must not make pt2interp compute ``10**(10**15)``)."""


def _binding(e: Expr, env: dict) -> str:
    return ", ".join(f"{k}={env[k]}" for k in sorted(e.symbols()) if k in env) or "no symbols"


_PREC = {"add": 1, "sub": 1, "mul": 2, "floordiv": 2, "mod": 2, "neg": 3, "pow": 4}
_INFIX = {"add": " + ", "sub": " - ", "mul": "*", "floordiv": "//", "mod": " % ", "pow": "**"}
# Relations torch records about sizes (``sym_bool_values``, runtime asserts) evaluate to bools.
_COMPARE = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}
_COMPARE_TEXT = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def _render(e: Expr, outer: int) -> str:
    if e.op == "int":
        return str(e.value) if e.value >= 0 or outer == 0 else f"({e.value})"
    if e.op == "sym":
        return e.value
    if e.op in ("max", "min", "abs"):
        return f"{e.op}({', '.join(_render(a, 0) for a in e.args)})"
    if e.op == "ceildiv":
        return f"-(-{_render(e.args[0], 5)} // {_render(e.args[1], 5)})"
    if e.op in _COMPARE_TEXT:
        text = f"{_render(e.args[0], 1)} {_COMPARE_TEXT[e.op]} {_render(e.args[1], 1)}"
        return f"({text})" if outer else text
    if e.op in ("and", "or"):
        text = f" {e.op} ".join(_render(a, 1) for a in e.args)
        return f"({text})" if outer else text
    if e.op == "not":
        return f"not {_render(e.args[0], 1)}" if not outer else f"(not {_render(e.args[0], 1)})"
    prec = _PREC[e.op]
    if e.op == "neg":
        text = "-" + _render(e.args[0], prec)
    elif e.op == "add":
        text = _render(e.args[0], prec)
        for a in e.args[1:]:
            if a.op == "int" and a.value < 0:
                text += f" - {-a.value}"
            elif a.op == "mul" and a.args and a.args[0].op == "int" and a.args[0].value == -1:
                text += " - " + _render(
                    Expr("mul", a.args[1:]) if len(a.args) > 2 else a.args[1], prec
                )
            else:
                text += " + " + _render(a, prec)
    else:
        text = _INFIX[e.op].join(
            _render(a, prec + (i > 0 and e.op != "mul")) for i, a in enumerate(e.args)
        )
    return f"({text})" if prec < outer else text


_SREPR_OPS = {
    "Add": "add",
    "Mul": "mul",
    "Pow": "pow",
    "FloorDiv": "floordiv",
    "Mod": "mod",
    "Max": "max",
    "Min": "min",
    "PythonMod": "mod",
    "CleanDiv": "floordiv",
    "IntTrueDiv": "floordiv",
}
_BINOPS = {
    ast.Add: "add",
    ast.Sub: "sub",
    ast.Mult: "mul",
    ast.FloorDiv: "floordiv",
    ast.Mod: "mod",
    ast.Pow: "pow",
    ast.BitAnd: "and",
    ast.BitOr: "or",
}
# sympy's relational and boolean classes as srepr writes them (GreaterThan is >=)
_SREPR_RELATIONS = {
    "Eq": "eq",
    "Equality": "eq",
    "Ne": "ne",
    "Unequality": "ne",
    "Lt": "lt",
    "StrictLessThan": "lt",
    "Le": "le",
    "LessThan": "le",
    "Gt": "gt",
    "StrictGreaterThan": "gt",
    "Ge": "ge",
    "GreaterThan": "ge",
}
_COMPARE_OPS = {
    ast.Eq: "eq",
    ast.NotEq: "ne",
    ast.Lt: "lt",
    ast.LtE: "le",
    ast.Gt: "gt",
    ast.GtE: "ge",
}
# integer roundings of a true division (sizes are non-negative: truncation is the floor)
_ROUNDINGS = {"CeilToInt": "ceildiv", "FloorToInt": "floordiv", "TruncToInt": "floordiv"}


def parse_expr(text: str, *, member: str | None = None, path: str | None = None) -> Expr:
    """Parse an archive's ``expr_str`` (either sympy ``srepr`` or ``str`` form).

    Raises :class:`SchemaError` naming ``member``/``path`` on anything it does not know.
    """
    if not isinstance(text, str) or len(text) > _MAX_EXPR_CHARS:
        raise SchemaError(
            "symbolic expression is not a string of sane length", member=member, path=path
        )
    if text.count("(") > _MAX_DEPTH and _paren_depth(text) > _MAX_DEPTH:
        # refused here, not by ast.parse: its limits and messages differ between Pythons
        raise SchemaError(
            f"symbolic expression {text[:80]!r} is nested too deeply", member=member, path=path
        )
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise SchemaError(
            f"cannot parse symbolic expression {text[:80]!r}: {exc}", member=member, path=path
        ) from None
    try:
        return _convert(tree.body, 0)
    except _Unsupported as exc:
        raise SchemaError(
            f"unsupported symbolic expression {text[:80]!r}: {exc}", member=member, path=path
        ) from None


def _paren_depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
    return deepest


class _Unsupported(Exception):
    pass


def _convert(node: ast.AST, depth: int) -> Expr:
    if depth > _MAX_DEPTH:
        raise _Unsupported("nested too deeply")
    d = depth + 1
    if isinstance(node, ast.Constant) and type(node.value) is bool:
        return Expr("int", value=int(node.value))
    if isinstance(node, ast.Name) and node.id in (
        "true",
        "false",
        "True",
        "False",
    ):  # sympy.true, srepr
        return Expr("int", value=int(node.id.lower() == "true"))
    if isinstance(node, ast.Constant) and type(node.value) is int:
        if node.value.bit_length() > _MAX_LITERAL_BITS:
            raise _Unsupported(
                f"an integer of {node.value.bit_length()} bits (at most {_MAX_LITERAL_BITS})"
            )
        return Expr("int", value=node.value)
    if isinstance(node, ast.Name):
        return Expr("sym", value=node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _convert(node.operand, d)
        return Expr("int", value=-inner.value) if inner.op == "int" else Expr("neg", (inner,))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
        return _convert(node.operand, d)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return Expr(_BINOPS[type(node.op)], (_convert(node.left, d), _convert(node.right, d)))
    if isinstance(node, ast.Compare) and all(type(o) in _COMPARE_OPS for o in node.ops):
        operands = [_convert(x, d) for x in (node.left, *node.comparators)]
        pairs = [
            Expr(_COMPARE_OPS[type(o)], (a, b)) for o, a, b in zip(node.ops, operands, operands[1:])
        ]
        return pairs[0] if len(pairs) == 1 else Expr("and", tuple(pairs))
    if isinstance(node, ast.BoolOp):
        return Expr(
            "and" if isinstance(node.op, ast.And) else "or",
            tuple(_convert(v, d) for v in node.values),
        )
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
        return Expr("not", (_convert(node.operand, d),))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        fn = node.func.id
        if (
            fn in ("Symbol", "Dummy")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            return Expr("sym", value=node.args[0].value)
        if fn == "Integer" and len(node.args) == 1:
            inner = _convert(node.args[0], d)
            if inner.op != "int":
                raise _Unsupported("Integer() of a non-integer")
            return inner
        if fn in ("Max", "Min") and node.args:
            return Expr(fn.lower(), tuple(_convert(a, d) for a in node.args))
        if fn in _SREPR_OPS and len(node.args) >= 2:
            return Expr(_SREPR_OPS[fn], tuple(_convert(a, d) for a in node.args))
        if fn in _SREPR_RELATIONS and len(node.args) == 2:
            return Expr(
                _SREPR_RELATIONS[fn], (_convert(node.args[0], d), _convert(node.args[1], d))
            )
        if fn in ("And", "Or") and node.args:
            return Expr(fn.lower(), tuple(_convert(a, d) for a in node.args))
        if fn in ("Not", "Abs") and len(node.args) == 1:
            return Expr(fn.lower(), (_convert(node.args[0], d),))
        if fn in _ROUNDINGS and len(node.args) == 1:
            inner = node.args[0]
            if (
                isinstance(inner, ast.Call)
                and isinstance(inner.func, ast.Name)
                and inner.func.id == "IntTrueDiv"
                and len(inner.args) == 2
            ):
                return Expr(
                    _ROUNDINGS[fn], (_convert(inner.args[0], d), _convert(inner.args[1], d))
                )
            return _convert(inner, d)  # of an integer: the integer itself
        if fn in ("max", "min") and node.args:
            return Expr(fn, tuple(_convert(a, d) for a in node.args))
        if fn == "abs" and len(node.args) == 1:
            return Expr("abs", (_convert(node.args[0], d),))
        raise _Unsupported(f"function {fn}")
    raise _Unsupported(type(node).__name__)
