"""Write a :class:`~pt2interp.codegen.classes.ModelPlan` out as one Python module.

Classes come in definition order (children before the classes that build them); each class
is rendered from its representative instance: ``__init__`` holes as parameter names or
literals, methods with local names put in for the markers. The module skeleton (docstring,
imports, class headers, the ``from_pt2`` / ``load_safetensors`` helpers) is the jinja2
template ``templates/module.py.j2``. Module-level functions (:data:`.layers.FUNCTIONS`) and
imports are exactly those the code reads.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass

import jinja2

from pt2interp.codegen import printer
from pt2interp.codegen.bodies import FunctionCode, render_line
from pt2interp.codegen.classes import ClassDef, ModelPlan
from pt2interp.codegen.layers import FUNCTIONS
from pt2interp.codegen.names import comment

# isort's order (ruff's I001): the standard library, then third party; in each section
# `import x` before `from x import y`.
_IMPORT_SECTIONS = [
    [
        ("math", "import math"),
        ("operator", "import operator"),
        ("namedtuple", "from collections import namedtuple"),
    ],
    [
        ("torch", "import torch"),
        ("F", "import torch.nn.functional as F"),
        ("nn", "from torch import nn"),
    ],
]


@dataclass
class RenderedMethod:
    header: str
    lines: list[str]


@dataclass
class RenderedClass:
    name: str
    init_header: str
    init_lines: list[str]
    methods: list[RenderedMethod]


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pt2interp.codegen", "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("module.py.j2")


def emit(plan: ModelPlan, *, description: str) -> str:
    reserved = {k.name for k in plan.classes} | {n for n, _ in plan.namedtuples.values()}
    classes = [_render_class(k, reserved) for k in plan.classes]
    module_lines = []
    for name, fields in plan.namedtuples.values():
        fields_src = "[" + ", ".join(printer.constant_text(f) for f in fields) + "]"
        module_lines.append(
            printer.format_statement(
                f"{name} = namedtuple({printer.constant_text(name)}, {fields_src})"
            )
        )
    tied = plan.facts.tied
    if tied:
        module_lines.append(
            printer.format_statement(
                "TIED_WEIGHTS = {"
                + ", ".join(
                    f"{printer.constant_text(a)}: {printer.constant_text(b)}"
                    for a, b in tied.items()
                )
                + "}"
            )
        )
    constants = [e.target for e in plan.facts.state.values() if not e.persistent]
    if constants:
        module_lines.append(
            printer.format_statement(
                "CONSTANTS = [" + ", ".join(printer.constant_text(c) for c in constants) + "]"
            )
        )
    context = {
        "docstring": _docstring(description),
        "module_lines": module_lines,
        "classes": classes,
        "root": plan.class_name,
        "tied": bool(tied),
        "constants": bool(constants),
        "eval": not plan.facts.traced_in_training_mode(),
    }
    # the module-level functions the classes call (layers.FUNCTIONS), then what all of it reads
    used = _names_read(_template().render(imports=[], functions=[], **context))
    context["functions"] = [text for name, text in FUNCTIONS.items() if name in used]
    used = _names_read(_template().render(imports=[], **context))
    imports: list[str] = []
    for section in _IMPORT_SECTIONS:
        lines = [line for name, line in section if name in used]
        if lines and imports:
            imports.append("")
        imports += lines
    return _template().render(imports=imports, **context)


def _docstring(text: str) -> str:
    # a docstring body may not hold quotes or backslashes from file names
    return comment(text).replace("\\", "/").replace('"', "'")


def _names_read(source: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}


def _render_class(klass: ClassDef, reserved: set[str]) -> RenderedClass:
    rep = klass.representative
    texts = klass.hole_texts()
    position = {id(h): i for i, h in enumerate(rep.holes())}

    def hole_text(hole) -> str:
        return texts[position[id(hole)]]

    def child_text(child) -> str:
        child_holes = child.holes()
        args = [hole_text(child_holes[positions[0]]) for _, positions in child.klass.params]
        return f"{child.klass.name}({', '.join(args)})"

    init_lines = [
        printer.format_statement(line.template(hole_text, child_text), 8) for line in rep.init
    ]
    params = ["self"] + [name for name, _ in klass.params]
    init_header = printer.format_def("__init__", params, 4)
    methods = [_render_method(m, reserved) for m in rep.methods]
    return RenderedClass(klass.name, init_header, init_lines, methods)


def _render_method(code: FunctionCode, reserved: set[str]) -> RenderedMethod:
    names = code.local_names(reserved)
    params = [names[m] for m in code.params]
    if code.kwonly_from is not None and code.kwonly_from < len(params):
        params.insert(code.kwonly_from, "*")
    header = printer.format_def(code.name, ["self", *params], 4)
    lines: list[str] = []
    for line in code.lines:
        lines.extend(render_line(line, names, 8))
    return RenderedMethod(header, lines or ["        pass"])
