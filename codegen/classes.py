"""Decide what each recovered module becomes, and share classes between like instances.

Every module of the tree (:mod:`pt2interp.codegen.tree`) becomes one of:

``layer``       a standard layer, written as itself (``nn.Conv2d(...)``, see :mod:`.layers`)
``sequential``  an ``nn.Sequential`` whose calls run its children one after another
``modulelist``  a never-called container of numbered children (``nn.ModuleList([...])``)
``inline``      a stateless ``torch.nn`` layer that matched no pattern: its nodes are written
                inline in the caller, as functional code
``class``       a generated ``nn.Module`` class (the root always)

Generated classes are built per instance as templates (:class:`Instance`): ``__init__``
statements whose literals are holes, methods over markers. Instances with equal templates
(and the same original class name) share one class; the holes whose values differ between
them become ``__init__`` parameters (``BasicBlock(in_channels)``), named after the first
keyword they fill. Classes are named after the original class (``BasicBlock``), with
``_2``, ``_3`` for further bodies of the same name.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from pt2interp.codegen.bodies import BodyBuilder, ChildCalls, ClassContext, CodeLine, FunctionCode
from pt2interp.codegen.ctor import ChildClass, Ctor, Lit, Raw, holes_of, literal, part_text
from pt2interp.codegen.facts import ProgramFacts, StateEntry, relative
from pt2interp.codegen.layers import LayerMatch, match_call
from pt2interp.codegen.names import (
    MODULE_NAMES,
    Scope,
    class_identifier,
    identifier,
    is_plain_attribute,
    list_index,
)
from pt2interp.codegen.printer import constant_text
from pt2interp.codegen.tree import ChildItem, Module
from pt2interp.errors import GraphError
from pt2interp.kinds import ArgKind, InputKind

SEQUENTIAL = "torch.nn.modules.container.Sequential"
_SMALL_CONSTANT = 16  # elements: larger constants stay empty buffers that from_pt2 fills
_LITERAL_DTYPES = frozenset(
    {"float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}
)


@dataclass(eq=False)
class InitLine:
    """One ``__init__`` statement: ``self.<attr> = <part>`` (``kind`` child/param), a
    buffer registration, or a fixed statement (``kind`` raw: weight ties)."""

    kind: str
    attr: str = ""
    part: object = None
    persistent: bool = True
    text: str = ""

    def holes(self) -> list[Lit]:
        return holes_of(self.part) if self.part is not None else []

    def template(self, hole_text, child_text) -> str:
        if self.kind == "raw":
            return self.text
        value = part_text(self.part, hole_text, child_text)
        name = constant_text(self.attr)
        if self.kind == "buffer":
            extra = "" if self.persistent else ", persistent=False"
            return f"self.register_buffer({name}, {value}{extra})"
        if is_plain_attribute(self.attr) and not _module_api(self.attr):
            return f"self.{self.attr} = {value}"
        # registering refuses a name nn.Module itself uses (`forward`, `training`), where a
        # plain assignment would quietly shadow it
        method = "register_parameter" if self.kind == "param" else "add_module"
        return f"self.{method}({name}, {value})"


@dataclass(eq=False)
class Instance:
    """A generated class's template for one module instance."""

    module: Module
    base_name: str
    init: list[InitLine] = field(default_factory=list)
    methods: list[FunctionCode] = field(default_factory=list)
    signature_id: int = -1
    klass: ClassDef | None = None

    def holes(self) -> list[Lit]:
        out: list[Lit] = []
        for line in self.init:
            out.extend(line.holes())
        return out

    def hole_owners(self) -> list[str]:
        """The attribute each hole's statement sets, for naming parameters."""
        return [line.attr for line in self.init for _ in line.holes()]

    def shape(self) -> tuple:
        init = tuple(
            line.template(lambda h: "?", lambda c: f"<{c.signature_id}>") for line in self.init
        )
        return (self.base_name, init, tuple(m.signature() for m in self.methods))


@dataclass(eq=False)
class ClassDef:
    name: str
    instances: list[Instance]
    params: list[tuple[str, list[int]]] = field(default_factory=list)  # (name, hole positions)

    @property
    def representative(self) -> Instance:
        return self.instances[0]

    def hole_texts(self) -> list[str]:
        """Source for each hole of the representative: a parameter name or a literal."""
        rep = self.representative.holes()
        texts = [literal(h.value) for h in rep]
        for name, positions in self.params:
            for p in positions:
                texts[p] = name
        return texts


class ModelPlan:
    """Everything the emitter writes: classes in definition order and the root instance."""

    def __init__(
        self,
        facts: ProgramFacts,
        root: Module,
        root_items: list,
        class_name: str,
        comments: bool = True,
    ):
        self.facts = facts
        self.root = root
        self.root_items = root_items
        self.kinds: dict[Module, str] = {}
        self.matches: dict[object, LayerMatch] = {}  # call → match
        self.ctors: dict[Module, object] = {}  # module → Ctor / ChildClass
        self.method_names: dict[object, str] = {}  # call → method name
        self.instances: dict[Module, Instance] = {}
        self.comments = comments
        self.child_calls = ChildCalls(self.kind_of, self.layer_call, self.method_of, comments)
        self.records_grad = any(
            e.kind is InputKind.PARAMETER and e.meta is not None and e.meta.requires_grad
            for e in facts.state.values()
        )
        self.root_function: FunctionCode | None = None
        self.module_scope = Scope(MODULE_NAMES)
        self.class_name = self.module_scope.claim(class_identifier(class_name), "Model")
        self.namedtuples: dict[tuple, tuple[str, tuple[str, ...]]] = {}
        for module in _post_order(root):
            self._decide(module)
        self.classes = self._group()

    # -- how bodies call child modules (see bodies.ChildCalls) ---------------------------------
    def kind_of(self, module: Module) -> str:
        return self.kinds.get(module, "class")

    def layer_call(self, call, source, target: str):
        match = self.matches[call]
        return match.call_text([source(v) for v in match.args], target), match.pattern

    def method_of(self, call) -> str:
        return self.method_names[call]

    # -- deciding ---------------------------------------------------------------------------------
    def _decide(self, module: Module) -> None:
        if module is self.root:
            self.kinds[module] = "class"
            self._build_class(module)
            return
        if module.calls:
            matches = [match_call(module, call, self.facts) for call in module.calls]
            if all(matches) and len({_ctor_key(m.ctor) for m in matches}) == 1:
                self.kinds[module] = "layer"
                self.matches.update(zip(module.calls, matches))
                self.ctors[module] = matches[0].ctor
                return
            if module.is_torch_nn and not module.children and not module.state:
                self.kinds[module] = "inline"
                return
            if module.type_name == SEQUENTIAL and self._is_chain(module):
                self.kinds[module] = "sequential"
                self.ctors[module] = Ctor("nn.Sequential", self._numbered_parts(module))
                return
        elif (
            not module.state
            and module.children
            and _numbered(module)
            and all(self.kinds[c] != "inline" for c in module.children.values())
        ):
            self.kinds[module] = "modulelist"
            self.ctors[module] = Ctor("nn.ModuleList", self._numbered_parts(module), star_list=True)
            return
        elif not module.children and module.state:
            inferred = self._infer_uncalled_layer(module)
            if inferred is not None:
                self.kinds[module] = "layer"
                self.ctors[module] = inferred
                return
        self.kinds[module] = "class"
        self._build_class(module)

    def _numbered_parts(self, module: Module) -> list:
        present = {list_index(k): c for k, c in module.children.items()}
        parts = []
        for i in range(max(present) + 1 if present else 0):
            child = present.get(i)
            # an index the archive never mentions held a stateless module that ran no op
            parts.append(self._part(child) if child is not None else Ctor("nn.Identity"))
        return parts

    def _part(self, module: Module):
        kind = self.kinds[module]
        if kind == "class":
            return ChildClass(self.instances[module])
        return self.ctors[module]

    def _is_chain(self, module: Module) -> bool:
        """Every call runs the numbered children in order, each feeding the next."""
        if module.state or not module.children or not _numbered(module):
            return False
        for call in module.calls:
            if len(call.inputs) != 1 or len(call.outputs) != 1:
                return False
            if not all(isinstance(item, ChildItem) for item in call.items):
                return False
            order = [relative(item.call.module.path, module.path) for item in call.items]
            indices = [list_index(o) for o in order]
            if None in indices or indices != sorted(set(indices)):
                return False
            if set(order) != set(module.children):
                return False
            current = call.inputs[0]
            for item in call.items:
                child = item.call.module
                kind = self.kinds[child]
                if kind not in ("layer", "sequential", "class") or item.call.inputs != [current]:
                    return False
                if len(item.call.outputs) != 1:
                    return False
                if kind == "class" and self.method_names.get(item.call) != "forward":
                    return False
                if kind == "layer" and (
                    self.matches[item.call].pattern != item.call.outputs[0]
                    or self.matches[item.call].function
                ):
                    return False  # the layer's own forward is not what its call runs
                current = item.call.outputs[0]
            if current != call.outputs[0]:
                return False
        return True

    def _infer_uncalled_layer(self, module: Module) -> Ctor | None:
        """A module no frame names but whose weight an ``aten.linear`` reads (a projection
        used functionally, such as MultiheadAttention's ``out_proj``): ``nn.Linear``."""
        weight, bias = module.state.get("weight"), module.state.get("bias")
        if (
            weight is None
            or set(module.state) - {"weight", "bias"}
            or weight.kind is not InputKind.PARAMETER
        ):
            return None
        if (
            weight.shape is None
            or len(weight.shape) != 2
            or (bias is not None and bias.shape != weight.shape[:1])
        ):
            return None
        if not any(
            _reads_as(self.facts, node, "weight", weight.target)
            for node in self.facts.program.graph.iter_nodes()
            if node.target == "torch.ops.aten.linear.default"
        ):
            return None
        kwargs = [] if bias is not None else [("bias", Lit(False, "bias"))]
        if weight.dtype != "float32":
            kwargs.append(("dtype", Raw(f"torch.{weight.dtype}")))
        return Ctor(
            "nn.Linear",
            [Lit(weight.shape[1], "in_features"), Lit(weight.shape[0], "out_features")],
            kwargs,
        )

    # -- generated classes ------------------------------------------------------------------------
    def _member_scope(self, module: Module) -> Scope:
        scope = Scope(MODULE_NAMES | {"forward"})
        for name in list(module.children) + list(module.state):
            scope.reserve(name)
        return scope

    def _build_class(self, module: Module) -> None:
        base = (
            self.class_name
            if module is self.root
            else class_identifier(
                module.class_name or identifier(module.attr).title().replace("_", "")
            )
        )
        inst = Instance(module, base)
        self.instances[module] = inst
        inst.init = self._init_lines(module)
        if module is self.root:
            from pt2interp.codegen.calling import build_root_forward

            ctx = ClassContext(self._member_scope(module))
            self.root_function = build_root_forward(self, ctx)
            inst.methods = [self.root_function, *ctx.helpers]
            return
        # calls with the same body share one method; distinct bodies get forward_1, ...
        member = self._member_scope(module)
        accepted: dict[tuple, str] = {}
        for call in module.calls:
            probe = self._call_body(
                module, call, ClassContext(self._member_scope(module)), "forward"
            )
            key = probe.signature()
            if key in accepted:
                self.method_names[call] = accepted[key]
                continue
            name = "forward" if not accepted else member.claim("forward")
            ctx = ClassContext(member)
            code = self._call_body(module, call, ctx, name)
            accepted[key] = name
            self.method_names[call] = name
            inst.methods += [code, *ctx.helpers]

    def _call_body(self, module: Module, call, ctx: ClassContext, name: str) -> FunctionCode:
        builder = BodyBuilder(self.facts, module, self.root, self.child_calls, ctx, name)
        for value in call.inputs:
            builder.add_param(value)
        builder.emit_items(call.items)
        builder.position = call.nodes[-1][0]
        if call.outputs:
            texts = [builder.source(v) for v in call.outputs]
            builder.line("return " + ", ".join(texts))
        return builder.code

    def _init_lines(self, module: Module) -> list[InitLine]:
        lines: list[InitLine] = []
        for attr, child in module.children.items():
            if self.kinds[child] == "inline":
                continue
            lines.append(InitLine("child", attr, self._part(child)))
        for attr, entry in module.state.items():
            lines.append(self._state_line(attr, entry))
        lines += self._ties(module)
        lines += self._freezes(module)
        return lines

    def _state_line(self, attr: str, entry: StateEntry) -> InitLine:
        shape = entry.shape
        if shape is None:
            raise GraphError(
                f"{self.facts.program.source}: {entry.noun} {entry.target!r} has no static shape "
                "in the program's tensor_values, so no module attribute can be declared for it"
            )
        hint = identifier(attr)
        dims = [Lit(int(d), f"{hint}_dim{i}") for i, d in enumerate(shape)] or [Raw("()")]
        kwargs = []
        if entry.dtype and entry.dtype != "float32":
            kwargs.append(("dtype", Raw(f"torch.{entry.dtype}")))
        empty = Ctor("torch.empty", dims, kwargs)
        constant = entry.kind is InputKind.TENSOR_CONSTANT
        literal = self._small_constant(entry) if constant else None
        if literal is not None:  # a lifted `torch.tensor(0)` reads as itself
            return InitLine("buffer", attr, literal, persistent=entry.persistent)
        if entry.kind is InputKind.PARAMETER:
            frozen = [("requires_grad", Raw("False"))] if self._frozen(entry) else []
            return InitLine("param", attr, Ctor("nn.Parameter", [empty], frozen))
        return InitLine("buffer", attr, empty, persistent=entry.persistent)

    def _small_constant(self, entry: StateEntry) -> Ctor | None:
        """``torch.tensor(<values>)`` for a constant of a few finite numbers (export lifts
        ``torch.tensor(0)`` written in ``forward``), else None (an empty buffer ``from_pt2``
        fills)."""
        import torch

        try:
            value = self.facts.program.tensor(entry.target)
        except Exception:  # noqa: BLE001 - no stored value: the empty buffer stays
            return None
        dtype = str(getattr(value, "dtype", "")).removeprefix("torch.")
        if (
            not isinstance(value, torch.Tensor)
            or value.numel() > _SMALL_CONSTANT
            or dtype not in _LITERAL_DTYPES
            or (value.is_floating_point() and not value.isfinite().all())
        ):
            return None
        values = value.tolist()
        text = constant_text(values) if value.dim() == 0 else repr(values)
        kwargs = (
            [] if torch.tensor(values).dtype == value.dtype else [("dtype", Raw(f"torch.{dtype}"))]
        )
        return Ctor("torch.tensor", [Raw(text)], kwargs)

    def _frozen(self, entry: StateEntry) -> bool:
        # only archives that record requires_grad (torch 2.6+) can say a parameter is frozen
        return self.records_grad and entry.kind is InputKind.PARAMETER and not entry.requires_grad

    def _ties(self, module: Module) -> list[InitLine]:
        """``self.head.weight = self.tok_emb.weight`` in the closest common ancestor."""
        lines = []
        for alias, first in self.facts.tied.items():
            if _common_module(alias, first) != module.path:
                continue
            lines.append(
                InitLine(
                    "raw",
                    text=f"{module.attribute_expr(relative(alias, module.path), self.kind_of)} = "
                    f"{module.attribute_expr(relative(first, module.path), self.kind_of)}",
                )
            )
        return lines

    def _freezes(self, module: Module) -> list[InitLine]:
        lines = []
        for attr, child in module.children.items():
            if self.kinds.get(child) != "layer":
                continue
            for name, entry in child.state.items():
                if self._frozen(entry):
                    lines.append(
                        InitLine(
                            "raw",
                            text=f"{module.attribute_expr(f'{attr}.{name}', self.kind_of)}"
                            f".requires_grad_(False)",
                        )
                    )
        return lines

    # -- sharing ----------------------------------------------------------------------------------
    def _group(self) -> list[ClassDef]:
        order = [self.instances[m] for m in _post_order(self.root) if m in self.instances]
        by_shape: dict[tuple, ClassDef] = {}
        classes: list[ClassDef] = []
        for inst in order:
            # children come first (post-order), so their signature ids are set by now
            key = inst.shape()
            klass = by_shape.get(key)
            if klass is None:
                klass = by_shape[key] = ClassDef(inst.base_name, [])
                classes.append(klass)
            inst.signature_id = classes.index(klass)
            inst.klass = klass
            klass.instances.append(inst)
        for klass in classes:
            klass.params = _lift(klass)
        _name_classes(classes, self.root, self.instances, self.module_scope, self.class_name)
        return classes


def _lift(klass: ClassDef) -> list[tuple[str, list[int]]]:
    """Hole positions whose values differ between the instances, as parameters; holes with
    the same values across instances share one parameter."""
    if len(klass.instances) < 2:
        return []
    vectors = [
        tuple(_hashable(h.value) for h in hs) for hs in zip(*(i.holes() for i in klass.instances))
    ]
    hints = [h.hint for h in klass.representative.holes()]
    owners = klass.representative.hole_owners()
    scope = Scope(MODULE_NAMES)
    by_vector: dict[tuple, tuple[str, list[int]]] = {}
    params: list[tuple[str, list[int]]] = []
    for pos, vec in enumerate(vectors):
        if len(set(vec)) == 1:
            continue
        if vec in by_vector:
            by_vector[vec][1].append(pos)
            continue
        # a second parameter with the same hint says whose it is: `expand1x1_out_channels`
        hint = hints[pos] if hints[pos] not in scope else f"{owners[pos]}_{hints[pos]}"
        entry = (scope.claim(hint), [pos])
        by_vector[vec] = entry
        params.append(entry)
    return params


def _name_classes(
    classes: list[ClassDef], root: Module, instances: dict, scope: Scope, root_name: str
) -> None:
    """Original class names, unique in the module: the first body (in module order) keeps
    the name, later ones get ``_2``, ``_3``."""
    root_class = instances[root].klass
    root_class.name = root_name
    named = {id(root_class)}
    seen: dict[str, int] = {}
    for module in root.walk():
        inst = instances.get(module)
        if inst is None or id(inst.klass) in named:
            continue
        klass = inst.klass
        named.add(id(klass))
        base = class_identifier(klass.name)
        n = seen.get(base, 0) + 1
        name = base if n == 1 else f"{base}_{n}"
        while name in scope:
            n += 1
            name = f"{base}_{n}"
        seen[base] = n
        scope.reserve(name)
        klass.name = name


@functools.cache
def _module_api(name: str) -> bool:
    import torch

    return hasattr(torch.nn.Module, name)


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _ctor_key(ctor: Ctor) -> str:
    return ctor.text(lambda h: repr(h.value))


def _numbered(module: Module) -> bool:
    """Children named 0, 1, 2, ... (a few indices may be missing: they become nn.Identity)."""
    keys = list(module.children)
    indices = [list_index(k) for k in keys]
    if not keys or None in indices:
        return False
    return max(indices) < 2 * len(keys) + 8  # not a sparse list of placeholders


def _post_order(module: Module):
    for child in module.children.values():
        yield from _post_order(child)
    yield module


def _common_module(a: str, b: str) -> str:
    pa, pb = a.split(".")[:-1], b.split(".")[:-1]
    common = []
    for x, y in zip(pa, pb):
        if x != y:
            break
        common.append(x)
    return ".".join(common)


def _reads_as(facts: ProgramFacts, node, arg_name: str, target: str) -> bool:
    for na in node.inputs:
        if na.name == arg_name and na.arg.kind is ArgKind.TENSOR:
            return target in facts.value_targets.get(na.arg.value.name, ())
    return False


__all__ = ["ClassDef", "CodeLine", "InitLine", "Instance", "ModelPlan"]
