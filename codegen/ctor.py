"""Constructor expressions whose literals can become ``__init__`` parameters.

``nn.Conv2d(4, 8, 3, stride=2, bias=False)`` is a :class:`Ctor` whose numbers are
:class:`Lit` holes. Two blocks whose constructors differ only in hole values can share one
class: the holes that differ become the class's ``__init__`` parameters
(``BasicBlock(in_channels)``), the rest stay literals.

>>> c = Ctor("nn.Linear", [Lit(16, "in_features"), Lit(32, "out_features")],
...          [("bias", Lit(False, "bias"))])
>>> c.shape(), [h.value for h in c.holes()]
('nn.Linear(?, ?, bias=?)', [16, 32, False])
>>> c.text(lambda hole: literal(hole.value))
'nn.Linear(16, 32, bias=False)'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pt2interp.codegen.printer import constant_text


@dataclass(eq=False)
class Lit:
    """A literal hole: ``value`` is an int, float, bool, None, str or tuple of ints;
    ``hint`` names the parameter it would become."""

    value: object
    hint: str


@dataclass(eq=False)
class Raw:
    """Source text that is part of the structure (``torch.float16``, ``"same"``)."""

    text: str


@dataclass(eq=False)
class ChildClass:
    """An instance of a generated class; its holes are that instance's own holes."""

    instance: object  # classes.Instance (kept untyped: no import cycle)


@dataclass(eq=False)
class Ctor:
    func: str
    args: list = field(default_factory=list)
    kwargs: list = field(default_factory=list)  # [(name, part)]
    star_list: bool = False  # ``nn.ModuleList([a, b])``: args inside one list display

    def parts(self):
        yield from self.args
        for _, v in self.kwargs:
            yield v

    def holes(self) -> list[Lit]:
        out: list[Lit] = []
        for p in self.parts():
            out.extend(holes_of(p))
        return out

    def shape(self) -> str:
        """The structure with holes as ``?``: equal shapes can share a class."""
        return self.text(lambda hole: "?", lambda child: f"<{child.signature_id}>")

    def text(self, hole_text: Callable[[Lit], str], child_text: Callable | None = None) -> str:
        items = [part_text(p, hole_text, child_text) for p in self.args]
        inner = ", ".join(items)
        if self.star_list:
            inner = f"[{inner}]"
        kw = [f"{k}={part_text(v, hole_text, child_text)}" for k, v in self.kwargs]
        return f"{self.func}({', '.join(([inner] if inner or self.star_list else []) + kw)})"


def holes_of(part) -> list[Lit]:
    if isinstance(part, Lit):
        return [part]
    if isinstance(part, Ctor):
        return part.holes()
    if isinstance(part, ChildClass):
        return part.instance.holes()
    return []


def part_text(part, hole_text, child_text) -> str:
    if isinstance(part, Lit):
        return hole_text(part)
    if isinstance(part, Raw):
        return part.text
    if isinstance(part, Ctor):
        return part.text(hole_text, child_text)
    if isinstance(part, ChildClass):
        if child_text is None:
            raise ValueError("a child class needs child_text")
        return child_text(part.instance)
    raise TypeError(type(part).__name__)


def literal(value) -> str:
    """Source for a hole's value (tuples of ints included)."""
    if isinstance(value, tuple):
        items = [literal(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    return constant_text(value)
