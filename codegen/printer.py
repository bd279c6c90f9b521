"""Print generated statements the way ``ruff format`` (default settings) would.

The emitter builds statements as text; this module parses each one with :mod:`ast` and
prints it back in ruff's style, so the generated file passes ``ruff format --check`` without
ruff being installed: double quotes, ``x**2`` hugging, ``x[a + 1 :]`` slice spacing, and
lines of at most 88 columns split the way ruff splits them (a Wadler/Prettier layout:
brackets break from the outside in; call arguments first try one indented line, then one
per line with a trailing comma; collection displays and ``def`` parameters go straight to
one per line; long binary expressions get parentheses).

Only the statement kinds the emitter writes are supported: assignments (tuple targets
included), expression statements, ``return``, ``if <test>:`` headers and ``def`` headers.

>>> print(format_statement("y = torch.cat([a, b], dim=1)", 8))
        y = torch.cat([a, b], dim=1)
>>> print(format_statement("z = x ** 2 + x[i + 1:]", 0))
z = x**2 + x[i + 1 :]
>>> print(format_statement("out = f(" + ", ".join(f"argument_{i}" for i in range(9)) + ")", 4))
    out = f(
        argument_0,
        argument_1,
        argument_2,
        argument_3,
        argument_4,
        argument_5,
        argument_6,
        argument_7,
        argument_8,
    )
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass

from pt2interp.codegen.names import string_literal

LINE_LENGTH = 88
INDENT = 4


# -- the document model ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    s: str


@dataclass(frozen=True, slots=True)
class Concat:
    parts: tuple


@dataclass(frozen=True, slots=True)
class Group:
    """Printed flat when it fits in the rest of the line, else broken."""

    doc: object


@dataclass(frozen=True, slots=True)
class Indent:
    doc: object


@dataclass(frozen=True, slots=True)
class Line:
    """A line break in a broken group; ``flat`` (``" "`` or ``""``) in a flat one."""

    flat: str = ""


@dataclass(frozen=True, slots=True)
class IfBreak:
    broken: str
    flat: str = ""


_FLAT, _BREAK = 0, 1


def concat(*parts) -> Concat:
    return Concat(tuple(Text(p) if isinstance(p, str) else p for p in parts))


def render(doc, indent: int = 0, width: int = LINE_LENGTH) -> str:
    """Lay ``doc`` out starting at column ``indent`` (the first line is not indented)."""
    out: list[str] = []
    pos = indent
    stack = [(indent, _BREAK, doc)]
    while stack:
        ind, mode, d = stack.pop()
        t = type(d)
        if t is Text:
            out.append(d.s)
            pos += len(d.s)
        elif t is Concat:
            stack.extend((ind, mode, p) for p in reversed(d.parts))
        elif t is Indent:
            stack.append((ind + INDENT, mode, d.doc))
        elif t is Group:
            if mode == _FLAT or _fits([(ind, _FLAT, d.doc)], stack, width - pos):
                stack.append((ind, _FLAT, d.doc))
            else:
                stack.append((ind, _BREAK, d.doc))
        elif t is Line:
            if mode == _FLAT:
                out.append(d.flat)
                pos += len(d.flat)
            else:
                out.append("\n" + " " * ind)
                pos = ind
        elif t is IfBreak:
            s = d.broken if mode == _BREAK else d.flat
            out.append(s)
            pos += len(s)
    return "".join(out)


def _fits(cmds: list, rest: list, width: int) -> bool:
    # Prettier's rule: measure the group flat plus whatever follows it on the same line,
    # i.e. up to the first line break of the (already broken) enclosing content.
    rest_i = len(rest)
    while width >= 0:
        if not cmds:
            if rest_i == 0:
                return True
            rest_i -= 1
            cmds.append(rest[rest_i])
            continue
        ind, mode, d = cmds.pop()
        t = type(d)
        if t is Text:
            width -= len(d.s)
        elif t is Concat:
            cmds.extend((ind, mode, p) for p in reversed(d.parts))
        elif t is Indent or t is Group:
            cmds.append((ind, mode, d.doc))
        elif t is Line:
            if mode == _BREAK:
                return True
            width -= len(d.flat)
        elif t is IfBreak:
            width -= len(d.broken if mode == _BREAK else d.flat)
    return False


# -- brackets ------------------------------------------------------------------------------------


def _joined(items: list, trailing: bool) -> list:
    parts: list = []
    for i, item in enumerate(items):
        if i:
            parts += [Text(","), Line(" ")]
        parts.append(item)
    if trailing:
        parts.append(IfBreak(","))
    return parts


def arguments(open_: str, items: list, close: str):
    """Call arguments / subscripts: one indented line if it fits, else one per line."""
    if not items:
        return Text(open_ + close)
    inner = Group(Concat(tuple(_joined(items, len(items) > 1))))
    return Group(concat(open_, Indent(concat(Line(), inner)), Line(), close))


def collection(open_: str, items: list, close: str, *, one_tuple: bool = False):
    """List/dict/tuple displays and ``def`` parameters: flat, or one item per line."""
    if not items:
        return Text(open_ + close)
    parts = _joined(items, len(items) > 1)
    if one_tuple:
        parts.append(Text(","))
    return Group(concat(open_, Indent(Concat((Line(), *parts))), Line(), close))


def parenthesized(doc):
    """``(doc)``, breaking inside the parentheses when it does not fit."""
    return Group(concat("(", Indent(concat(Line(), doc)), Line(), ")"))


def optional_parens(doc):
    """Parentheses that appear only when ``doc`` has to break (assignment values)."""
    return Group(concat(IfBreak("("), Indent(concat(Line(), doc)), Line(), IfBreak(")")))


# -- expressions ------------------------------------------------------------------------------

# CPython's operator precedence (ast._Precedence), lowest first.
(
    _TUPLE,
    _TEST,
    _OR,
    _AND,
    _NOT,
    _CMP,
    _BOR,
    _BXOR,
    _BAND,
    _SHIFT,
    _ARITH,
    _TERM,
    _FACTOR,
    _POWER,
    _AWAIT,
    _ATOM,
) = range(16)

_BINOPS = {
    ast.Add: ("+", _ARITH),
    ast.Sub: ("-", _ARITH),
    ast.Mult: ("*", _TERM),
    ast.MatMult: ("@", _TERM),
    ast.Div: ("/", _TERM),
    ast.FloorDiv: ("//", _TERM),
    ast.Mod: ("%", _TERM),
    ast.Pow: ("**", _POWER),
    ast.LShift: ("<<", _SHIFT),
    ast.RShift: (">>", _SHIFT),
    ast.BitOr: ("|", _BOR),
    ast.BitXor: ("^", _BXOR),
    ast.BitAnd: ("&", _BAND),
}
_UNARY = {
    ast.UAdd: ("+", _FACTOR),
    ast.USub: ("-", _FACTOR),
    ast.Invert: ("~", _FACTOR),
    ast.Not: ("not ", _NOT),
}
_CMPOPS = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}


def _precedence(e: ast.expr) -> int:
    t = type(e)
    if t is ast.BinOp:
        return _BINOPS[type(e.op)][1]
    if t is ast.UnaryOp:
        return _UNARY[type(e.op)][1]
    if t is ast.BoolOp:
        return _AND if isinstance(e.op, ast.And) else _OR
    if t is ast.Compare:
        return _CMP
    if t in (ast.IfExp, ast.Lambda):
        return _TEST
    if t is ast.Tuple:
        return _TUPLE
    if (
        t is ast.Constant
        and isinstance(e.value, (int, float))
        and not isinstance(e.value, bool)
        and e.value < 0
    ):
        return _FACTOR
    return _ATOM


_MAX_DECIMAL_BITS = 4096  # about 1,230 digits


def constant_text(value) -> str:
    """Source for a Python constant, as ruff writes it, that evaluates back to the very same
    value: ``math.inf`` and ``math.nan`` for the floats that have no literal, and
    ``complex(re, im)`` where ``repr`` would not round-trip (``(inf+nanj)`` is no Python,
    ``(-0+1j)`` loses the sign of zero).

    >>> (constant_text(complex(float("inf"), float("nan"))), constant_text(-0.0),
    ...  constant_text(1 - 2j))
    ('complex(math.inf, math.nan)', '-0.0', '(1-2j)')
    """
    if value is None or value is True or value is False or value is Ellipsis:
        return "..." if value is Ellipsis else repr(value)
    if isinstance(value, str):
        return string_literal(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "math.nan"
        if math.isinf(value):
            return "math.inf" if value > 0 else "-math.inf"
        return repr(value)
    if isinstance(value, int):
        # decimal text stops at 4300 digits (sys.get_int_max_str_digits); hex has no limit
        return repr(value) if value.bit_length() <= _MAX_DECIMAL_BITS else hex(value)
    if isinstance(value, complex):
        if all(
            math.isfinite(x) and (x or math.copysign(1.0, x) > 0) for x in (value.real, value.imag)
        ):
            return repr(value)
        return f"complex({constant_text(value.real)}, {constant_text(value.imag)})"
    raise ValueError(f"no literal for {type(value).__name__}")


class _Printer:
    """ast.expr → document. ``breakable``: inside brackets, where lines may break."""

    def doc(self, e: ast.expr, breakable: bool = False):
        method = getattr(self, "_" + type(e).__name__, None)
        if method is None:
            raise ValueError(f"cannot print {type(e).__name__}")
        return method(e, breakable)

    def operand(self, e: ast.expr, min_prec: int, breakable: bool):
        if _precedence(e) < min_prec:
            return parenthesized(self.doc(e, True))
        return self.doc(e, breakable)

    # atoms
    def _Name(self, e, b):
        return Text(e.id)

    def _Constant(self, e, b):
        return Text(constant_text(e.value))

    def _Starred(self, e, b):
        return concat("*", self.operand(e.value, _BOR, b))

    def _Attribute(self, e, b):
        value = e.value
        if (
            isinstance(value, ast.Constant)
            and isinstance(value.value, (int, float, complex))
            and not isinstance(value.value, bool)
        ):
            return concat("(", self.doc(value), ").", e.attr)
        return concat(self.operand(value, _ATOM, b), ".", e.attr)

    def _Call(self, e, b):
        items = [self.doc(a, True) for a in e.args]
        for kw in e.keywords:
            value = self.doc(kw.value, True)
            items.append(concat("**", value) if kw.arg is None else concat(kw.arg, "=", value))
        return concat(self.operand(e.func, _ATOM, b), arguments("(", items, ")"))

    def _Subscript(self, e, b):
        s = e.slice
        elements = s.elts if isinstance(s, ast.Tuple) and s.elts else [s]
        items = [self._slice_element(x) for x in elements]
        if isinstance(s, ast.Tuple) and len(s.elts) == 1:
            items = [concat(items[0], ",")]
        return concat(self.operand(e.value, _ATOM, b), arguments("[", items, "]"))

    def _slice_element(self, x):
        if not isinstance(x, ast.Slice):
            return self.doc(x, True)
        bounds = [x.lower, x.upper] + ([x.step] if x.step is not None else [])
        # ruff spaces the colons of a slice whose bounds are not all simple (`x[a + 1 :]`)
        spaced = any(v is not None and not _simple_bound(v) for v in bounds)
        parts: list = []
        for i, v in enumerate(bounds):
            if i:
                before = " " if spaced and bounds[i - 1] is not None else ""
                after = " " if spaced and v is not None else ""
                parts.append(Text(f"{before}:{after}"))
            if v is not None:
                parts.append(self.doc(v, True))
        return Concat(tuple(parts))

    def _List(self, e, b):
        return collection("[", [self.doc(x, True) for x in e.elts], "]")

    def _Tuple(self, e, b):
        items = [self.doc(x, True) for x in e.elts]
        return collection("(", items, ")", one_tuple=len(items) == 1)

    def _Set(self, e, b):
        return collection("{", [self.doc(x, True) for x in e.elts], "}")

    def _Dict(self, e, b):
        items = []
        for k, v in zip(e.keys, e.values):
            items.append(
                concat("**", self.operand(v, _BOR, True))
                if k is None
                else concat(self.doc(k, True), ": ", self.doc(v, True))
            )
        return collection("{", items, "}")

    # operators
    def _BinOp(self, e, b):
        symbol, prec = _BINOPS[type(e.op)]
        if symbol == "**":
            left = self.operand(e.left, _POWER + 1, b)
            right = self.operand(e.right, _FACTOR, b)
            # a parenthesized operand is never simple: `(-x) ** 2`
            hug = (
                _precedence(e.left) > _POWER
                and _simple_power_operand(e.left)
                and _simple_power_operand(e.right)
            )
            if hug:
                return concat(left, "**", right)
            if b:
                return Group(concat(left, Line(" "), "** ", right))
            return concat(left, " ** ", right)
        # a left-associative chain of one precedence breaks before each operator
        chain = []
        node = e
        while (
            isinstance(node, ast.BinOp)
            and _BINOPS[type(node.op)][1] == prec
            and _BINOPS[type(node.op)][0] != "**"
        ):
            chain.append((_BINOPS[type(node.op)][0], node.right))
            node = node.left
        parts = [self.operand(node, prec, b)]
        for sym, right in reversed(chain):
            parts += [
                Line(" ") if b else Text(" "),
                Text(sym + " "),
                self.operand(right, prec + 1, b),
            ]
        return Group(Concat(tuple(parts))) if b else Concat(tuple(parts))

    def _UnaryOp(self, e, b):
        symbol, prec = _UNARY[type(e.op)]
        operand = e.operand
        if isinstance(operand, ast.BinOp) and isinstance(operand.op, ast.Pow) and symbol != "not ":
            return concat(symbol, parenthesized(self.doc(operand, True)))  # ruff: `-(x**2)`, not `-x**2`
        return concat(symbol, self.operand(operand, prec, b))

    def _BoolOp(self, e, b):
        word = " and " if isinstance(e.op, ast.And) else " or "
        prec = _precedence(e)
        parts = [self.operand(e.values[0], prec + 1, b)]
        for v in e.values[1:]:
            parts += [
                Line(" ") if b else Text(" "),
                Text(word.strip() + " "),
                self.operand(v, prec + 1, b),
            ]
        return Group(Concat(tuple(parts))) if b else Concat(tuple(parts))

    def _Compare(self, e, b):
        parts = [self.operand(e.left, _CMP + 1, b)]
        for op, right in zip(e.ops, e.comparators):
            parts += [
                Line(" ") if b else Text(" "),
                Text(_CMPOPS[type(op)] + " "),
                self.operand(right, _CMP + 1, b),
            ]
        return Group(Concat(tuple(parts))) if b else Concat(tuple(parts))

    def _IfExp(self, e, b):
        sep = Line(" ") if b else Text(" ")
        parts = (
            self.operand(e.body, _TEST + 1, b),
            sep,
            Text("if "),
            self.operand(e.test, _TEST + 1, b),
            sep,
            Text("else "),
            self.operand(e.orelse, _TEST, b),
        )
        return Group(Concat(parts)) if b else Concat(parts)

    def _Lambda(self, e, b):
        # codegen writes only `lambda *args: f(*args)`: a parameter list of names and one *args
        a = e.args
        if (
            a.posonlyargs
            or a.kwonlyargs
            or a.kwarg
            or a.defaults
            or any(x.annotation for x in a.args)
        ):
            raise ValueError("cannot print a lambda with defaults, keywords or annotations")
        params = [x.arg for x in a.args] + ([f"*{a.vararg.arg}"] if a.vararg else [])
        head = f"lambda {', '.join(params)}:" if params else "lambda:"
        return concat(head, " ", self.operand(e.body, _TEST, b))


def _simple_bound(e: ast.expr) -> bool:
    if isinstance(e, (ast.Name, ast.Constant)):
        return True
    return isinstance(e, ast.UnaryOp) and isinstance(e.operand, (ast.Name, ast.Constant))


def _simple_power_operand(e: ast.expr) -> bool:
    if isinstance(e, ast.Name):
        return True
    if isinstance(e, ast.Constant):
        return e.value is None or isinstance(e.value, (int, float, complex))
    if isinstance(e, ast.Attribute):
        return _attribute_chain(e)
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, (ast.USub, ast.UAdd, ast.Invert)):
        return _simple_power_operand(e.operand)
    return False


def _attribute_chain(e: ast.expr) -> bool:
    while isinstance(e, ast.Attribute):
        e = e.value
    return isinstance(e, ast.Name)


_PRINTER = _Printer()


def expression_doc(e: ast.expr, breakable: bool = False):
    return _PRINTER.doc(e, breakable)


def _needs_optional_parens(e: ast.expr) -> bool:
    return isinstance(e, (ast.BinOp, ast.BoolOp, ast.Compare, ast.IfExp)) or (
        isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not)
    )


def _value_doc(e: ast.expr, head: int = 0, indent: int = 0):
    """An assignment or return value. ``head``: the columns before it on its line.

    A long binary expression gets parentheses and breaks at its operators, unless (ruff's
    rule) it has a single operator at its loosest level and its last operand ends, or its
    first operand starts, with non-empty brackets that can take the break instead:
    ``y = a * f(`` / ``    b, c`` / ``)``.
    """
    if _is_atom(e):
        # a name, literal or attribute chain too long for its line gets parentheses only
        # when that makes it fit (ruff's best fit); otherwise it stays as it is
        width = len(_flat(expression_doc(e)))
        if head + width > LINE_LENGTH - indent and indent + INDENT + width <= LINE_LENGTH:
            return optional_parens(expression_doc(e))
        return expression_doc(e)
    if not _needs_optional_parens(e):
        return expression_doc(e)
    levels: list[int] = []
    _operator_levels(e, levels)
    if levels and levels.count(min(levels)) == 1:
        last, last_wrapped = _edge_operand(e, last=True)
        first, first_wrapped = _edge_operand(e, last=False)
        if last_wrapped or _own_brackets(last) or first_wrapped or _starts_with_bracket(first):
            plain = expression_doc(e)
            first_line = render(plain, indent + head).split("\n", 1)[0]
            if indent + head + len(first_line) <= LINE_LENGTH:  # ruff's best fit
                return plain
    return optional_parens(expression_doc(e, True))


def _is_atom(e: ast.expr) -> bool:
    if isinstance(e, (ast.Name, ast.Constant)):
        return True
    if isinstance(e, ast.UnaryOp) and isinstance(e.operand, ast.Constant):
        return True
    return isinstance(e, ast.Attribute) and _attribute_chain(e)


def _operator_levels(e: ast.expr, out: list[int]) -> None:
    """Precedences of the operators outside brackets (operands the printer parenthesizes
    count as brackets)."""
    prec = _precedence(e)
    if isinstance(e, ast.BinOp):
        out.append(prec)
        for side, need in ((e.left, prec), (e.right, prec + 1)):
            if _precedence(side) >= need:
                _operator_levels(side, out)
    elif isinstance(e, (ast.BoolOp, ast.Compare)):
        operands = e.values if isinstance(e, ast.BoolOp) else [e.left, *e.comparators]
        out.extend([prec] * (len(operands) - 1))
        for side in operands:
            if _precedence(side) > prec:
                _operator_levels(side, out)
    elif isinstance(e, ast.UnaryOp) and _precedence(e.operand) >= prec:
        _operator_levels(e.operand, out)


def _edge_operand(e: ast.expr, *, last: bool) -> tuple[ast.expr, bool]:
    """The leftmost or rightmost operand, not looking inside parenthesized operands, and
    whether the printer puts it in parentheses."""
    while True:
        prec = _precedence(e)
        if isinstance(e, ast.BinOp):
            nxt, need = (e.right, prec + 1) if last else (e.left, prec)
        elif isinstance(e, (ast.BoolOp, ast.Compare)):
            operands = e.values if isinstance(e, ast.BoolOp) else [e.left, *e.comparators]
            nxt, need = operands[-1 if last else 0], prec + 1
        elif isinstance(e, ast.UnaryOp) and last:
            nxt, need = e.operand, prec
        else:
            return e, False
        if _precedence(nxt) < need:
            return nxt, True  # printed in parentheses: an edge of its own
        e = nxt


def _own_brackets(e: ast.expr) -> bool:
    """Brackets of its own, non-empty, that can break (subscripts excepted, as ruff does)."""
    if isinstance(e, ast.Call):
        return bool(e.args or e.keywords)
    if isinstance(e, (ast.List, ast.Tuple, ast.Set)):
        return bool(e.elts)
    if isinstance(e, ast.Dict):
        return bool(e.keys)
    return False


def _starts_with_bracket(e: ast.expr) -> bool:
    """The leftmost token is an opening bracket of a non-empty display: ``[a, b].sum()``."""
    while isinstance(e, (ast.Call, ast.Attribute, ast.Subscript)):
        e = e.func if isinstance(e, ast.Call) else e.value
    return isinstance(e, (ast.List, ast.Tuple, ast.Set, ast.Dict)) and _own_brackets(e)


def _flat(doc) -> str:
    return render(doc, 0, 10**9)


def _target_doc(e: ast.expr, top: bool = True):
    if isinstance(e, ast.Tuple):
        items = [_target_doc(x, False) for x in e.elts]
        if top:
            if len(items) == 1:
                return concat("(", items[0], ",)")
            return optional_parens(Concat(tuple(_joined(items, True))))
        return collection("(", items, ")", one_tuple=len(items) == 1)
    return expression_doc(e)


def statement_doc(stmt: ast.stmt, indent: int = 0):
    """The document of one simple statement that starts at column ``indent``."""
    if isinstance(stmt, ast.Assign):
        targets = [concat(_target_doc(t), " = ") for t in stmt.targets]
        head = sum(len(_flat(t)) for t in targets)
        return concat(*targets, _value_doc(stmt.value, head, indent))
    if isinstance(stmt, ast.Expr):
        return expression_doc(stmt.value)
    if isinstance(stmt, ast.AugAssign):
        symbol = _BINOPS[type(stmt.op)][0]
        target = _flat(_target_doc(stmt.target))
        return concat(
            target, f" {symbol}= ", _value_doc(stmt.value, len(target) + len(symbol) + 3, indent)
        )
    if isinstance(stmt, ast.Return):
        if stmt.value is None:
            return Text("return")
        v = stmt.value
        if isinstance(v, ast.Tuple) and v.elts:
            items = [expression_doc(x, True) for x in v.elts]
            if len(items) == 1:
                return concat("return ", collection("(", items, ")", one_tuple=True))
            return concat("return ", optional_parens(Concat(tuple(_joined(items, True)))))
        return concat("return ", _value_doc(v, len("return "), indent))
    raise ValueError(f"cannot print a {type(stmt).__name__} statement")


def format_statement(source: str, indent: int = 0) -> str:
    """``source`` (one simple statement) laid out at ``indent`` columns, indentation included."""
    tree = ast.parse(source)
    if len(tree.body) != 1:
        raise ValueError(f"expected one statement, got {len(tree.body)}")
    return " " * indent + render(statement_doc(tree.body[0], indent), indent)


def format_if(test_source: str, indent: int) -> str:
    test = ast.parse(test_source, mode="eval").body
    doc = concat(
        "if ",
        optional_parens(expression_doc(test, True))
        if _needs_optional_parens(test)
        else expression_doc(test),
        ":",
    )
    return " " * indent + render(doc, indent)


def format_header(keyword: str, expr_source: str, indent: int) -> str:
    """``with item:`` (one context manager) or ``while test:``."""
    expr = ast.parse(expr_source, mode="eval").body
    return " " * indent + render(concat(f"{keyword} ", expression_doc(expr), ":"), indent)


def format_def(name: str, params: list[str], indent: int) -> str:
    """``def name(params):`` with ruff's layout for long parameter lists."""
    doc = concat(f"def {name}", collection("(", [Text(p) for p in params], ")"), ":")
    if len(params) == 1:
        # a lone parameter that has to wrap keeps a trailing comma, as ruff writes it
        doc = concat(
            f"def {name}",
            Group(concat("(", Indent(concat(Line(), params[0], IfBreak(","))), Line(), ")")),
            ":",
        )
    return " " * indent + render(doc, indent)
