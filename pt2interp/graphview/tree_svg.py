"""A static picture of a program's module tree: SVG, and PNG through a headless Chromium.

:func:`module_tree_svg` draws the tree the way a file explorer lists folders: one row per
module, its local name and class in a box, lines to its children, and right-aligned columns
for its parameters, the graph nodes that run inside it (its submodules' included) and its most
frequent ops. A header gives the file, torch and schema versions, the totals, and the inputs
and outputs with their shapes. A run of siblings built alike (``blocks.1`` to ``blocks.11``,
each like ``blocks.0``) takes one row, ``depth`` and ``max_children`` cut the rest, and at
most :data:`MAX_ROWS` rows are drawn, so any file gives a picture of bounded size.

Everything comes from one outline of the program JSON (described as
:func:`pt2interp.read_schema` describes it): torch is not imported and no weight byte is
read. Names are file content, shown as inert text with control characters as escapes; a long
one is cut, its full text a tooltip.

>>> import importlib.resources as r, xml.etree.ElementTree as ET
>>> svg = module_tree_svg(r.files("pt2interp.examples") / "tiny_mlp.pt2")
>>> picture = ET.fromstring(svg)
>>> picture.get("viewBox") == f"0 0 {picture.get('width')} {picture.get('height')}"
True
>>> "1,872 parameters" in svg, "x float32[2, 8] → out float32[2, 16]" in svg
(True, True)
>>> SVG = "{http://www.w3.org/2000/svg}"
>>> for row in picture.iter(SVG + "g"):
...     if "row" in row.get("class", "").split():
...         print(" | ".join(text.text for text in row.iter(SVG + "text")))
tiny_mlp.pt2 | TinyMLP | 1.9K | 5 | linear ×3 · relu ×2
fc1 | Linear | 288 | 1 | linear ×1
fc2 | Linear | 1.1K | 1 | linear ×1
fc3 | Linear | 528 | 1 | linear ×1

:func:`svg_to_png` rasterizes such a picture with a headless Chromium found on ``PATH``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from pt2interp.archive import open_archive
from pt2interp.errors import Pt2Error
from pt2interp.introspect import IOValue, ModuleNode, ProgramSchema, describe_program
from pt2interp.printable import printable
from pt2interp.program import collector_paused, read_program
from pt2interp.units import human_bytes

__all__ = ["MAX_ROWS", "RenderError", "module_tree_svg", "svg_to_png"]

MAX_ROWS = 2000  # module rows drawn; then one row says how many modules were left out

_NAME_COLUMNS = 40  # a module's local name, cut beyond this with an ellipsis
_CLASS_COLUMNS = 32
_RUN_COLUMNS = 72  # "blocks.1 – blocks.11: 11 × GPTBlock, same as blocks.0"
_OP_NAME_COLUMNS = 20
_TOP_OPS = 2
_TOP_OPS_COLUMNS = 64
_HEADER_COLUMNS = 160
_MIN_HEADER_COLUMNS = 80  # inputs and outputs wrap at the table's width, or this if wider
_IO_LINES = 3  # lines of inputs, and of outputs, at most
_CONTINUED = "\u00a0\u00a0"  # indents a wrapped line (no-break spaces: SVG collapses spaces)
_TOOLTIP_CHARS = 1000  # full text in tooltips, cut too: a name may be megabytes

# Geometry, in pixels. Text is monospace, so a width is its columns times the advance
# (DejaVu Sans Mono's 0.602 em, rounded up so fonts a little wider still fit).
_FONT = 12
_ADVANCE = 7.3
_TITLE_FONT = 15
_TITLE_ADVANCE = 9.1
_MARGIN = 16
_ROW = 24
_BOX = 18
_INDENT = 22
_PAD = 6  # inside a box, either side of its text
_GAP = 28  # between the tree and the first column, and between columns

_FONTS = "'DejaVu Sans Mono', Menlo, Consolas, 'Liberation Mono', monospace"
_STYLE = f"""
text {{ font-family: {_FONTS}; font-size: {_FONT}px; fill: #1f2328; }}
.title {{ font-size: {_TITLE_FONT}px; font-weight: bold; }}
.sub {{ fill: #59636e; }}
.head {{ fill: #59636e; font-size: 11px; }}
.cls {{ fill: #8250df; }}
.note, .zero {{ fill: #818b98; }}
.num {{ text-anchor: end; }}
.ops {{ fill: #0550ae; }}
.more {{ fill: #59636e; font-style: italic; }}
.stripe {{ fill: #f6f8fa; }}
.rule {{ stroke: #d1d9e0; }}
.wire {{ stroke: #afb8c1; fill: none; }}
.box {{ fill: #ffffff; stroke: #d1d9e0; }}
.box.parent {{ fill: #eef6ff; stroke: #9cc9f7; }}
.box.root {{ fill: #ddf4ff; stroke: #54aeff; }}
.box.same {{ fill: #fff8c5; stroke: #d4a72c; stroke-dasharray: 4 3; }}
"""


class RenderError(Pt2Error):
    """A picture could not be made: no browser to rasterize with, or the browser failed."""


# ----------------------------------------------------------------------------------------------
# What the picture shows
# ----------------------------------------------------------------------------------------------


@dataclass
class _Row:
    level: int
    kind: str  # root, module, same (a run built like an earlier sibling), more (cut), left_out
    label: str
    class_name: str = ""
    note: str = ""
    params: int | None = None
    nodes: int | None = None
    ops: str = ""
    parent: int | None = None  # index of the row it hangs from
    has_children: bool = False  # drawn below it, or hidden by the depth limit


class _TreeFacts:
    """Per module (by FQN), over its subtree: modules, graph nodes, op counts, and a structure
    id equal for two modules of the same classes and parameter counts all the way down."""

    def __init__(self, tree: ModuleNode, graph):
        modules = {m.fqn: m for m in tree.walk()}
        self.modules: dict[str, int] = {}
        self.nodes: dict[str, int] = {}
        self.ops: dict[str, Counter] = {fqn: Counter() for fqn in modules}
        self.structure: dict[str, int] = {}
        for node in graph.iter_nodes():
            stack = node.nn_module_stack
            fqn = stack[-1].fqn if stack else ""
            while fqn not in modules:  # cut off by the tree's depth limit: its deepest ancestor
                fqn = fqn.rpartition(".")[0]
            self.ops[fqn][_op_name(node.target)] += 1
        self._structures: dict[tuple, int] = {}
        self._visit(tree)

    def _visit(self, module: ModuleNode) -> int:
        children = [self._visit(c) for c in module.children]
        ops = self.ops[module.fqn]
        for child in module.children:
            ops.update(self.ops[child.fqn])
        self.modules[module.fqn] = 1 + sum(self.modules[c.fqn] for c in module.children)
        self.nodes[module.fqn] = ops.total()
        # interned: two subtrees compare as two ints, however deep they are
        key = (module.class_name, module.parameter_count, tuple(children))
        self.structure[module.fqn] = self._structures.setdefault(key, len(self._structures))
        return self.structure[module.fqn]

    def top_ops(self, fqn: str) -> str:
        return " · ".join(
            f"{_cut(name, _OP_NAME_COLUMNS)} ×{n:,}"
            for name, n in self.ops[fqn].most_common(_TOP_OPS)
        )


def _op_name(target: str) -> str:
    """``torch.ops.aten.linear.default`` -> ``linear``; ``_operator.getitem`` -> ``getitem``."""
    parts = target.removeprefix("torch.ops.").split(".")
    return parts[1] if target.startswith("torch.ops.") and len(parts) > 1 else parts[-1]


class _Layout:
    """The rows, depth first; ``covered`` counts the modules the rows so far stand for."""

    def __init__(self, facts: _TreeFacts, depth: int | None, max_children: int):
        self.facts = facts
        self.depth = depth
        self.max_children = max_children
        self.rows: list[_Row] = []
        self.covered = 0
        self.full = False

    def add(self, row: _Row, covers: int) -> bool:
        if len(self.rows) >= MAX_ROWS:
            self.full = True
            return False
        self.rows.append(row)
        self.covered += covers
        return True

    def module(self, module: ModuleNode, level: int, label: str, parent: int | None) -> None:
        facts, fqn = self.facts, module.fqn
        cut = self.depth is not None and level >= self.depth and bool(module.children)
        hidden = facts.modules[fqn] - 1 if cut else 0
        row = _Row(
            level,
            "root" if parent is None else "module",
            label,
            module.class_name or "",
            f"+{hidden} submodule{'s' if hidden != 1 else ''}" if hidden else "",
            module.parameter_count,
            facts.nodes[fqn],
            facts.top_ops(fqn),
            parent,
            has_children=bool(module.children),
        )
        if not self.add(row, 1 + hidden) or cut:
            return
        index = len(self.rows) - 1
        runs = self._runs(module.children, level + 1)
        for first, followers in runs[: self.max_children]:
            self.module(first, level + 1, first.name, index)
            if followers:
                self.add(self._same_row(first, followers, level + 1, index), self._size(followers))
            if self.full:
                return
        rest = [m for first, followers in runs[self.max_children :] for m in (first, *followers)]
        if rest:
            self.add(
                self._summary_row(f"… and {len(rest)} more", rest, level + 1, index),
                self._size(rest),
            )

    def _runs(self, children: list[ModuleNode], level: int) -> list[tuple[ModuleNode, list]]:
        """Consecutive siblings of one structure, as (first, the others) where one row for the
        others saves rows: they have submodules drawn, or there are two or more of them."""
        structure = self.facts.structure
        runs: list[tuple[ModuleNode, list]] = []
        for child in children:
            if runs and structure[child.fqn] == structure[runs[-1][0].fqn]:
                runs[-1][1].append(child)
            else:
                runs.append((child, []))
        expanded = self.depth is None or level < self.depth
        out = []
        for first, followers in runs:
            if len(followers) >= 2 or (followers and first.children and expanded):
                out.append((first, followers))
            else:
                out += [(m, []) for m in (first, *followers)]
        return out

    def _same_row(self, first: ModuleNode, followers: list, level: int, parent: int) -> _Row:
        what = first.class_name or "module"
        if len(followers) == 1:
            label = f"{followers[0].fqn} {what}"
        else:
            label = f"{followers[0].fqn} – {followers[-1].fqn}: {len(followers)} × {what}"
        return self._summary_row(f"{label}, same as {first.fqn}", followers, level, parent, "same")

    def _summary_row(
        self, label: str, modules: list[ModuleNode], level: int, parent: int, kind: str = "more"
    ) -> _Row:
        """One row for several modules, with their parameters and nodes summed."""
        params = sum(m.parameter_count for m in modules)
        nodes = sum(self.facts.nodes[m.fqn] for m in modules)
        return _Row(level, kind, label, params=params, nodes=nodes, parent=parent)

    def _size(self, modules: list[ModuleNode]) -> int:
        return sum(self.facts.modules[m.fqn] for m in modules)


# ----------------------------------------------------------------------------------------------
# Text: file content made inert, measured and cut
# ----------------------------------------------------------------------------------------------

_NOT_XML = re.compile("[\ufffe\uffff]")  # printable() leaves these; XML 1.0 has no such chars


def _clean(text: str) -> str:
    """Control characters as escapes; a text longer than any tooltip is cut first, so that
    a megabyte name costs no more than a short one."""
    text = printable(str(text)[: 2 * _TOOLTIP_CHARS])
    return _NOT_XML.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _xml(text: str) -> str:
    """Safe as element text and inside either kind of attribute quotes."""
    return escape(text, {'"': "&quot;", "'": "&apos;"})


def _columns(text: str) -> int:
    """Monospace cells: East Asian wide characters take two, combining marks none."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit and _columns(text) <= limit:
        return text
    out, used = [], 0
    for c in text:
        used += _columns(c)
        if used > limit - 1:
            break
        out.append(c)
    return "".join(out) + "…"


def _human_count(n: int) -> str:
    """808, 29.2K, 1.2M, 6.7B."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size * 0.9995 and (unit == "B" or round(n / size, 1) < 1000):
            return f"{n / size:.1f}{unit}"
    return str(n)


def _io_text(value: IOValue) -> str:
    if value.tensor is not None:
        return f"{value.name} {value.tensor.dtype}{value.tensor.shape_str}"
    if value.kind == "constant":
        return f"{value.name}={value.value}"
    return f"{value.name}: {value.kind}" + (f" {value.value}" if value.value is not None else "")


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------


class _Svg:
    def __init__(self):
        self.parts: list[str] = []

    def text(self, x: float, y: float, raw: str, css: str, limit: int) -> float:
        """Archive text at (x, baseline y), cut to ``limit`` columns (the whole as a tooltip);
        returns its width."""
        full = _clean(raw)
        shown = _cut(full, limit)
        tip = f"<title>{_xml(_cut(full, _TOOLTIP_CHARS))}</title>" if shown != full else ""
        self.parts.append(f'<text x="{x:g}" y="{y:g}" class="{css}">{_xml(shown)}{tip}</text>')
        return _columns(shown) * _ADVANCE

    def add(self, element: str) -> None:
        self.parts.append(element)


def _shown_width(raw: str, limit: int) -> float:
    return _columns(_cut(_clean(raw), limit)) * _ADVANCE


def _facts_line(schema: ProgramSchema) -> str:
    totals = schema.totals
    count = f"{totals.parameter_count:,} parameters"
    if totals.parameter_count >= 10_000:
        count += f" ({_human_count(totals.parameter_count)})"
    facts = [
        f"torch {schema.torch_version}" if schema.torch_version else "torch version not recorded",
        "schema " + ".".join(map(str, schema.schema_version)),
        count,
        human_bytes(totals.total_bytes),
    ]
    if totals.tied:  # the tree counts a tied weight under each of its names
        tied = sum(len(names) - 1 for names in totals.tied)
        facts.append(f"{tied} tied weight{'s' if tied != 1 else ''} counted once")
    return " · ".join(facts)


def _io_lines(schema: ProgramSchema, columns: int) -> list[str]:
    """``inputs → outputs`` on one line if it fits in ``columns``, else wrapped between
    values: the inputs, then the outputs on lines starting with ``→``."""
    inputs = [_clean(_io_text(v)) for v in schema.inputs] or ["()"]
    outputs = [_clean(_io_text(v)) for v in schema.outputs] or ["()"]
    line = f"{', '.join(inputs)} → {', '.join(outputs)}"
    if _columns(line) <= columns:
        return [line]
    return _wrap(inputs, "", columns) + _wrap(outputs, "→ ", columns)


def _wrap(values: list[str], prefix: str, columns: int) -> list[str]:
    """At most :data:`_IO_LINES` lines, the last saying how many values did not fit."""
    lines, line = [], prefix
    for i, value in enumerate(values):
        piece = value if i == len(values) - 1 else value + ","
        if line.strip() and _columns(line) + 1 + _columns(piece) > columns:
            if len(lines) == _IO_LINES - 1:
                return [*lines, f"{line} … {len(values) - i} more"]
            lines.append(line)
            line = _CONTINUED
        line += piece if not line.strip() else " " + piece
    return [*lines, line]


@dataclass
class _Table:
    """Where the rows go: each row's box (x, width, and the width of the note after it), the
    column texts, and the columns' edges."""

    boxes: list[tuple[float, float, float]]
    params: list[str]
    nodes: list[str]
    params_right: float
    nodes_right: float
    ops_x: float
    right: float

    @classmethod
    def of(cls, rows: list[_Row]) -> _Table:
        boxes = []
        for row in rows:
            x, note = _MARGIN + row.level * _INDENT, 0.0
            if row.kind in ("root", "module"):
                w = 2 * _PAD + _shown_width(row.label, _NAME_COLUMNS)
                if row.class_name:
                    w += _ADVANCE + _shown_width(row.class_name, _CLASS_COLUMNS)
                if row.note:
                    note = _ADVANCE + _shown_width(row.note, _NAME_COLUMNS)
            elif row.kind == "same":
                w = 2 * _PAD + _shown_width(row.label, _RUN_COLUMNS)
            else:
                w = _shown_width(row.label, _RUN_COLUMNS)
            boxes.append((x, w, note))
        params = [_human_count(r.params) if r.params else "–" for r in rows]
        nodes = [f"{r.nodes:,}" if r.nodes else "–" for r in rows]
        tree_right = max(x + w + note for x, w, note in boxes)
        params_right = tree_right + _GAP + max(map(_columns, [*params, "params"])) * _ADVANCE
        nodes_right = params_right + _GAP + max(map(_columns, [*nodes, "nodes"])) * _ADVANCE
        ops_x = nodes_right + _GAP
        ops_w = max([_shown_width(r.ops, _TOP_OPS_COLUMNS) for r in rows] + [7 * _ADVANCE])
        return cls(boxes, params, nodes, params_right, nodes_right, ops_x, ops_x + ops_w)


def _draw(schema: ProgramSchema, title: str, rows: list[_Row]) -> str:
    table = _Table.of(rows)
    header_columns = max(_MIN_HEADER_COLUMNS, int((table.right - _MARGIN) / _ADVANCE))
    lines = [_facts_line(schema), *_io_lines(schema, header_columns)]
    heading_y = _MARGIN + 20 + 18 * len(lines) + 14  # the column headings' top
    rows_y = heading_y + 18
    width = int(
        max(
            table.right + _MARGIN,
            2 * _MARGIN + _columns(_cut(_clean(title), _HEADER_COLUMNS)) * _TITLE_ADVANCE,
            *(2 * _MARGIN + _shown_width(line, _HEADER_COLUMNS) for line in lines),
        )
        + 0.5
    )
    height = int(rows_y + len(rows) * _ROW + _MARGIN)
    svg = _Svg()
    svg.add(f'<rect width="{width}" height="{height}" fill="#ffffff"/>')

    y = _MARGIN + 15
    svg.text(_MARGIN, y, title, "title", _HEADER_COLUMNS)
    for line in lines:
        y += 18
        svg.text(_MARGIN, y, line, "sub", _HEADER_COLUMNS)
    rule_y = heading_y - 6
    svg.add(
        f'<line x1="{_MARGIN}" y1="{rule_y}" x2="{width - _MARGIN}" y2="{rule_y}" class="rule"/>'
    )
    svg.text(_MARGIN, heading_y + 8, "module · class", "head", 20)
    svg.text(table.params_right, heading_y + 8, "params", "head num", 10)
    svg.text(table.nodes_right, heading_y + 8, "nodes", "head num", 10)
    svg.text(table.ops_x, heading_y + 8, "top ops", "head", 10)

    def top(i: int) -> float:
        return rows_y + i * _ROW

    for i in range(1, len(rows), 2):
        svg.add(
            f'<rect x="{_MARGIN / 2:g}" y="{top(i):g}" width="{width - _MARGIN:g}" '
            f'height="{_ROW}" rx="3" class="stripe"/>'
        )

    # wires: down from under a parent's box, then across to each child
    last_child: dict[int, int] = {}
    for i, row in enumerate(rows):
        if row.parent is not None:
            last_child[row.parent] = i
    for parent, last in last_child.items():
        x, y0, y1 = table.boxes[parent][0] + _INDENT / 2, top(parent) + (_ROW + _BOX) / 2, top(last)
        svg.add(f'<path d="M{x:g} {y0:g}V{y1 + _ROW / 2:g}" class="wire"/>')
    for i, row in enumerate(rows):
        if row.parent is not None:
            x0, y = table.boxes[row.parent][0] + _INDENT / 2, top(i) + _ROW / 2
            svg.add(f'<path d="M{x0:g} {y:g}H{table.boxes[i][0]:g}" class="wire"/>')

    for i, row in enumerate(rows):
        _draw_row(svg, table, i, row, top(i))

    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">\n'
        f"<style>{_STYLE}</style>\n" + "\n".join(svg.parts) + "\n</svg>\n"
    )


def _draw_row(svg: _Svg, table: _Table, i: int, row: _Row, top: float) -> None:
    x, w, _ = table.boxes[i]
    baseline = top + _ROW / 2 + 4
    svg.add('<g class="row">' if row.kind in ("root", "module") else f'<g class="row {row.kind}">')
    if row.kind in ("root", "module", "same"):
        look = row.kind if row.kind != "module" else "parent" if row.has_children else "leaf"
        svg.add(
            f'<rect x="{x:g}" y="{top + (_ROW - _BOX) / 2:g}" width="{w:g}" height="{_BOX}" '
            f'rx="4" class="box {look}"/>'
        )
    if row.kind in ("root", "module"):
        name_w = svg.text(x + _PAD, baseline, row.label, "name", _NAME_COLUMNS)
        if row.class_name:
            svg.text(x + _PAD + name_w + _ADVANCE, baseline, row.class_name, "cls", _CLASS_COLUMNS)
        if row.note:
            svg.text(x + w + _ADVANCE, baseline, row.note, "note", _NAME_COLUMNS)
    elif row.kind == "same":
        svg.text(x + _PAD, baseline, row.label, "name", _RUN_COLUMNS)
    else:
        svg.text(x, baseline, row.label, "more", _RUN_COLUMNS)
    if row.kind != "left_out":
        zero = " zero" * (not row.params)
        svg.text(table.params_right, baseline, table.params[i], "num" + zero, 12)
        zero = " zero" * (not row.nodes)
        svg.text(table.nodes_right, baseline, table.nodes[i], "num" + zero, 16)
    if row.ops:
        svg.text(table.ops_x, baseline, row.ops, "ops", _TOP_OPS_COLUMNS)
    svg.add("</g>")


# ----------------------------------------------------------------------------------------------
# The functions
# ----------------------------------------------------------------------------------------------


def module_tree_svg(
    source: str | os.PathLike,
    *,
    model: str | None = None,
    depth: int | None = None,
    max_children: int = 24,
) -> str:
    """A standalone SVG document picturing the module tree of ``source`` (a ``.pt2`` path).

    ``model`` picks one of an archive's models; ``depth`` is how many levels below the root
    are drawn (``None``: all; a row with levels hidden says ``+N submodules``);
    ``max_children`` caps the children drawn under one module (a run of alike siblings, drawn
    as its first and one row for the others, counts as one), then one row says
    ``… and N more``. An archive that cannot be read raises what :func:`read_schema` raises
    (a :class:`~pt2interp.errors.Pt2Error`).
    """
    if depth is not None and depth < 0:
        raise ValueError(f"depth must be None or at least 0, not {depth}")
    if max_children < 1:
        raise ValueError(f"max_children must be at least 1, not {max_children}")
    with open_archive(source) as archive, collector_paused():
        # one outline of the program (no node arguments): the description, and the per-module
        # node counts the description does not keep
        outline = read_program(archive, model, outline=True)
        schema = describe_program(outline, check_ops=None)
        facts = _TreeFacts(schema.module_tree, outline.model.graph)
        del outline  # not kept while drawing
    layout = _Layout(facts, depth, max_children)
    title = Path(os.fspath(source)).name
    if len(schema.archive.models) > 1:
        title += f" · model {schema.model}"
    layout.module(schema.module_tree, 0, title, None)
    rows = layout.rows
    if layout.full:
        left = facts.modules[""] - layout.covered
        rows.append(_Row(0, "left_out", f"… {left:,} more modules not drawn"))
    return _draw(schema, title, rows)


_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_BROWSER_TIMEOUT_S = 60
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SVG_TAG = re.compile(r"<svg\b[^>]*>")
_PIXELS = {side: re.compile(rf'\s{side}="([\d.]+)(?:px)?"') for side in ("width", "height")}

# The picture as an image, not inline: an SVG loaded by <img> runs no script and fetches nothing.
_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><style>
html, body {{ margin: 0; padding: 0; overflow: hidden; background: #ffffff; }}
img {{ display: block; }}
</style></head>
<body><img src="picture.svg" width="{width}" height="{height}" alt=""></body></html>
"""


def svg_to_png(
    svg_text: str,
    output: str | os.PathLike,
    *,
    browser: str | None = None,
    scale: float = 1.0,
) -> Path:
    """Rasterize ``svg_text`` (with ``width`` and ``height`` in pixels on its root) to a PNG at
    ``output`` with a headless Chromium: ``browser`` (a name or path), else the first of
    ``chromium``, ``chromium-browser``, ``google-chrome``, ``google-chrome-stable`` on
    ``PATH``. ``scale`` multiplies the pixels (2.0 for a sharp picture on a high-density
    screen). Raises :class:`RenderError` when there is no browser or it makes no picture."""
    if not 0 < scale <= 8:
        raise ValueError(f"scale must be in (0, 8], not {scale}")
    tag = _SVG_TAG.search(svg_text)
    sizes = [p.search(tag.group()) if tag else None for p in _PIXELS.values()]
    if None in sizes:
        raise ValueError("svg_text has no <svg> element with width and height in pixels")
    width, height = (max(1, round(float(m.group(1)))) for m in sizes)
    executable = _find_browser(browser)
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="pt2interp-png-", ignore_cleanup_errors=True) as tmp:
        folder = Path(tmp)
        (folder / "picture.svg").write_text(svg_text, encoding="utf-8")
        page = folder / "page.html"
        page.write_text(_PAGE.format(width=width, height=height), encoding="utf-8")
        shot = folder / "shot.png"
        command = [
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={folder / 'profile'}",
            f"--window-size={width},{height}",
            f"--force-device-scale-factor={scale:g}",
            f"--screenshot={shot}",
            page.as_uri(),
        ]
        stderr = _run_browser(command)
        # into place only when whole: a failure leaves an earlier file at ``output`` as it was
        if not shot.is_file() or not shot.read_bytes()[:8] == _PNG_SIGNATURE:
            tail = stderr.strip().splitlines()[-3:]
            raise RenderError(
                f"{executable} wrote no PNG screenshot" + (f": {' / '.join(tail)}" if tail else "")
            )
        shutil.copyfile(shot, output)
    return output


def _find_browser(browser: str | None) -> str:
    names = (browser,) if browser else _BROWSERS
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    wanted = repr(browser) if browser else "Chromium (" + ", ".join(_BROWSERS) + ")"
    raise RenderError(
        f"PNG output needs a headless Chromium and {wanted} is not on PATH; "
        "install Chromium or ask for --format svg"
    )


def _run_browser(command: list[str]) -> str:
    """Run the browser in a session of its own, so that on a timeout its helper processes
    (renderer, GPU, zygote) end with it; returns its stderr."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=_BROWSER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:  # Windows: no process groups; the browser itself ends its helpers
            process.kill()
        # not read to its end: a helper that left the group could hold the pipe open for ever
        process.stderr.close()
        process.wait()
        raise RenderError(
            f"{command[0]} took over {_BROWSER_TIMEOUT_S} s to draw the picture and was stopped"
        ) from None
    if process.returncode != 0:
        tail = " / ".join(stderr.strip().splitlines()[-3:])
        raise RenderError(f"{command[0]} failed (exit status {process.returncode}): {tail}")
    return stderr
