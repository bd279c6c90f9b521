"""The root ``forward``: the original calling convention and output structure.

Parameters come from the program's input spec: the original argument names
(``forward_arg_names``), keyword inputs as keyword-only parameters, nested inputs read by
indexing (``pair[0]``). The return value rebuilds the output spec: tuples, lists, dicts
(``OrderedDict`` and ``defaultdict`` as plain dicts, which keep order), namedtuples as a
module-level ``namedtuple`` class with the recorded fields. Buffer mutations of core-ATen
graphs are written back with ``copy_`` at the end, after every use of the old value, the
way the interpreter writes them back after the run.
"""

from __future__ import annotations

from pt2interp.codegen.bodies import BodyBuilder, ClassContext, FunctionCode
from pt2interp.codegen.names import Scope, class_identifier, identifier
from pt2interp.codegen.printer import constant_text
from pt2interp.codegen.statements import argument_source
from pt2interp.errors import SchemaError
from pt2interp.kinds import RETURNED_OUTPUT_KINDS, InputKind, OutputKind
from pt2interp.signature import CallSignature
from pt2interp.treespec import TreeSpec

_DICTS = (
    "builtins.dict",
    "collections.OrderedDict",
    "collections.defaultdict",
    "torch.fx.immutable_collections.immutable_dict",
)
_LISTS = ("builtins.list", "torch.fx.immutable_collections.immutable_list")


def build_root_forward(plan, ctx: ClassContext) -> FunctionCode:
    facts = plan.facts
    model = facts.program.model
    builder = BodyBuilder(facts, plan.root, plan.root, plan.child_calls, ctx, "forward")
    for spec, arg in zip(model.signature.input_specs, model.graph.inputs):
        if spec.kind == InputKind.TOKEN:
            for r in arg.refs():
                builder.bind(r, "None")
    leaves = [_leaf_value(leaf.spec) for leaf in CallSignature.from_model(model).inputs]
    _bind_parameters(builder, model.root_call, leaves, facts)
    builder.emit_items(plan.root_items)
    builder.position = len(model.graph.nodes)
    _write_back(builder, model)
    result = _result(builder, model, plan)
    if result != "None":  # falling off the end returns None (ruff: RET501, PLR1711)
        builder.line("return " + result)
    return builder.code


def _leaf_value(spec) -> str | None:
    if spec.kind == InputKind.USER_INPUT:
        refs = spec.arg.refs()
        return refs[0] if refs else None
    return None  # a constant input: the graph was specialised to its value


class _Placeholders:
    """Value names for parameters no graph value stands for (containers, constants)."""

    def __init__(self, facts):
        self.facts = facts
        self.n = 0

    def new(self) -> str:
        while True:
            self.n += 1
            name = f"\x00param{self.n}"
            if name not in self.facts.defined_at and name not in self.facts.value_targets:
                return name


def _bind_parameters(builder: BodyBuilder, root_call, leaves: list[str | None], facts) -> None:
    spec = root_call.in_spec if root_call is not None else None
    placeholders = _Placeholders(facts)
    if (
        spec is None
        or spec.type != "builtins.tuple"
        or len(spec.children) != 2
        or spec.num_leaves != len(leaves)
    ):
        for value in leaves:
            builder.add_param(value if value else placeholders.new(), value or "arg")
        return
    args_spec, kwargs_spec = spec.children
    names = list(root_call.forward_arg_names or [])
    leaf_iter = iter(leaves)
    for i, child in enumerate(args_spec.children):
        name = names[i] if i < len(names) else _first_leaf_name(child, leaves, i)
        _bind_one(builder, child, leaf_iter, name, placeholders)
    if kwargs_spec.children:
        builder.code.kwonly_from = len(builder.code.params)
    for key, child in zip(kwargs_spec.dict_keys, kwargs_spec.children):
        _bind_one(builder, child, leaf_iter, str(key), placeholders)


def _first_leaf_name(child: TreeSpec, leaves, i: int) -> str:
    value = leaves[i] if child.is_leaf and i < len(leaves) else None
    return value or f"arg{i}"


def _bind_one(builder: BodyBuilder, spec: TreeSpec, leaf_iter, name: str, placeholders) -> None:
    if spec.is_leaf:
        value = next(leaf_iter)
        builder.add_param(value if value else placeholders.new(), name)
        return
    marker = builder.add_param(placeholders.new(), name)
    _bind_nested(builder, spec, leaf_iter, marker)


def _bind_nested(builder: BodyBuilder, spec: TreeSpec, leaf_iter, expr: str) -> None:
    """Leaves of a nested input read by indexing: ``pair[0]``, ``inputs["mask"]``."""
    if spec.is_leaf:
        value = next(leaf_iter)
        if value:
            builder.bind(value, expr)
        return
    if spec.type == "builtins.NoneType":
        return
    if spec.type in _DICTS:
        for key, child in zip(spec.dict_keys, spec.children):
            _bind_nested(builder, child, leaf_iter, f"{expr}[{_key(key)}]")
        return
    for i, child in enumerate(spec.children):
        _bind_nested(builder, child, leaf_iter, f"{expr}[{i}]")


def _key(key) -> str:
    if isinstance(key, (str, int, float, bool)) or key is None:
        return constant_text(key)
    raise SchemaError(f"dict key {str(key)[:40]!r} has no Python literal")


def _write_back(builder: BodyBuilder, model) -> None:
    for spec, arg in zip(model.signature.output_specs, model.graph.outputs):
        refs = arg.refs()
        if not refs:
            continue
        value = refs[0]
        if spec.kind in (OutputKind.BUFFER_MUTATION, OutputKind.PARAMETER_MUTATION):
            if spec.target in builder.facts.value_targets.get(value, ()):
                continue  # written in place already
            builder.line(f"{builder.self_path(spec.target)}.copy_({builder.source(value)})")
        elif spec.kind == OutputKind.USER_INPUT_MUTATION and spec.target != value:
            builder.line(f"{builder.source(spec.target)}.copy_({builder.source(value)})")


def _result(builder: BodyBuilder, model, plan) -> str:
    user = [
        arg
        for spec, arg in zip(model.signature.output_specs, model.graph.outputs)
        if spec.kind in RETURNED_OUTPUT_KINDS
    ]
    texts = [argument_source(a, builder.source) for a in user]
    root = model.root_call
    if root is None or root.out_spec.num_leaves != len(texts):
        return texts[0] if len(texts) == 1 else ", ".join(texts) if texts else "None"
    leaves = iter(texts)
    spec = root.out_spec
    if spec.type == "builtins.tuple" and len(spec.children) > 1:
        return ", ".join(_structure(c, leaves, plan) for c in spec.children)
    return _structure(spec, leaves, plan)


def _structure(spec: TreeSpec, leaves, plan) -> str:
    if spec.is_leaf:
        return next(leaves)
    if spec.type == "builtins.NoneType":
        return "None"
    kids = [_structure(c, leaves, plan) for c in spec.children]
    if spec.type in _DICTS:
        return "{" + ", ".join(f"{_key(k)}: {v}" for k, v in zip(spec.dict_keys, kids)) + "}"
    if spec.type in _LISTS:
        return "[" + ", ".join(kids) + "]"
    if spec.type == "collections.namedtuple":
        return f"{namedtuple_class(plan, spec)}({', '.join(kids)})"
    if spec.type == "builtins.tuple":
        return "(" + ", ".join(kids) + ("," if len(kids) == 1 else "") + ")"
    raise SchemaError(f"cannot write an output of type {spec.type!r} as Python")


def namedtuple_class(plan, spec: TreeSpec) -> str:
    """The module-level ``namedtuple`` standing for a recorded namedtuple type."""
    fields = tuple(_field(f) for f in (spec.namedtuple_fields or ()))
    key = (str(spec.context), fields)
    known = plan.namedtuples.get(key)
    if known is None:
        scope: Scope = plan.module_scope
        name = scope.claim(class_identifier(str(spec.context).rsplit(".", 1)[-1]), "Output")
        known = plan.namedtuples[key] = (name, _unique_fields(fields))
    return known[0]


def _field(raw) -> str:
    name = identifier(raw, "field")
    return "f" + name if name.startswith("_") else name  # namedtuple refuses leading underscores


def _unique_fields(fields: tuple[str, ...]) -> tuple[str, ...]:
    scope = Scope({"self"})
    return tuple(scope.claim(f, "field") for f in fields)
