"""Recover the module tree and its calls from a flat graph.

Every node's ``nn_module_stack`` names the modules it ran inside, outermost first. The
tree has one :class:`Module` per dotted path that a frame or a state-dict name mentions.
:func:`recover` then cuts the node list recursively: inside module ``M``, consecutive nodes
whose stack continues into the same child ``C`` are one call of ``C`` (a :class:`CallGroup`);
nodes whose innermost frame is ``M`` stay inline in ``M``'s forward. A call's inputs are the
values it reads that are defined outside it (first use first; ``C``'s own parameters and
buffers are not inputs, tied or outside ones are), its outputs the values it defines that
anything after it reads (later nodes, graph outputs, buffer mutations).

>>> import pt2interp, importlib.resources as r
>>> from pt2interp.codegen.facts import ProgramFacts
>>> facts = ProgramFacts.of(pt2interp.read_program(r.files("pt2interp.examples") / "tiny_mlp.pt2"))
>>> root, items = recover(facts)
>>> sorted(root.children), [type(i).__name__ for i in items][:2]
(['fc1', 'fc2', 'fc3'], ['ChildItem', 'NodeItem'])
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from pt2interp.codegen.facts import ProgramFacts, StateEntry, node_defines, node_reads, under
from pt2interp.codegen.names import is_plain_attribute, list_index
from pt2interp.codegen.printer import constant_text
from pt2interp.errors import GraphError
from pt2interp.schema import ModuleFrame, Node, parse_nn_module_stack


@dataclass(eq=False)
class Module:
    """One module of the original tree. ``type_name`` is the class the frames name
    (``torch.nn.modules.conv.Conv2d``), None for modules never called."""

    path: str
    attr: str
    type_name: str | None = None
    children: dict[str, Module] = field(default_factory=dict)
    state: dict[str, StateEntry] = field(default_factory=dict)
    calls: list[CallGroup] = field(default_factory=list)

    @property
    def class_name(self) -> str | None:
        return self.type_name.rsplit(".", 1)[-1] if self.type_name else None

    @property
    def is_torch_nn(self) -> bool:
        return bool(self.type_name) and self.type_name.startswith("torch.nn.")

    def attribute_expr(self, path: str, kind_of: Callable[[Module], str | None]) -> str:
        """``self.a.b[0].weight``: the expression that reaches a dotted path below this module
        from its own ``self``; children of modules ``kind_of`` calls ``sequential`` or
        ``modulelist`` are indexed, names that are no plain attribute go through ``getattr``."""
        expr, node = "self", self
        for part in path.split("."):
            index = list_index(part)
            if (
                node is not None
                and kind_of(node) in ("sequential", "modulelist")
                and index is not None
            ):
                expr = f"{expr}[{index}]"
            elif is_plain_attribute(part):
                expr = f"{expr}.{part}"
            else:
                expr = f"getattr({expr}, {constant_text(part)})"
            node = node.children.get(part) if node is not None else None
        return expr

    def walk(self):
        """This module and every descendant, parents first."""
        yield self
        for child in self.children.values():
            yield from child.walk()

    def ensure(self, path: str) -> Module:
        node = self
        for part in path.split(".") if path else ():
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = Module(
                    f"{node.path}.{part}" if node.path else part, part
                )
            node = child
        return node


@dataclass(eq=False)
class NodeItem:
    """A node emitted inline in its module's forward."""

    node: Node
    index: int


@dataclass(eq=False)
class CallGroup:
    """One call of ``module``: its nodes, inputs and outputs, and how its body partitions."""

    module: Module
    nodes: list[tuple[int, Node]]
    inputs: list[str]
    outputs: list[str]
    items: list = field(default_factory=list)

    @property
    def node_list(self) -> list[Node]:
        return [n for _, n in self.nodes]


@dataclass(eq=False)
class ChildItem:
    call: CallGroup


# Real module trees are a few levels deep. Everything here walks the tree recursively, a few
# frames per level: deeper paths (only a doctored file has them) are refused, not recursed into.
MAX_MODULE_DEPTH = 64


def build_tree(facts: ProgramFacts) -> Module:
    """The module tree: paths from state names and from every node's frames."""
    root = Module("", "")
    for entry in facts.state.values():
        _check_depth(entry.module_path, f"{entry.noun} {entry.target[:200]!r}", facts)
        root.ensure(entry.module_path).state[entry.attr] = entry
    for node in facts.program.graph.iter_nodes():
        for frame in frames_of(node):
            if frame.fqn == "":
                root.type_name = root.type_name or frame.type_name
            else:
                _check_depth(frame.fqn, f"node {node.label[:200]!r}", facts)
                m = root.ensure(frame.fqn)
                m.type_name = m.type_name or frame.type_name
    return root


def _check_depth(path: str, what: str, facts: ProgramFacts) -> None:
    if path.count(".") >= MAX_MODULE_DEPTH:
        raise GraphError(
            f"{facts.program.source}: {what} lies {path.count('.') + 1} modules deep; "
            f"generated source nests modules at most {MAX_MODULE_DEPTH} deep"
        )


def recover(facts: ProgramFacts) -> tuple[Module, list]:
    """The module tree and the root forward's items (inline nodes and child calls)."""
    root = build_tree(facts)
    nodes = list(enumerate(facts.program.graph.nodes))
    items = partition(root, root, nodes, facts)
    for module in root.walk():
        _order_children(module)
    return root, items


def _order_children(module: Module) -> None:
    """Children in a likely registration order: those holding state as the state dict lists
    them (that order is exact), each stateless one (``relu``, ``pool``) just before the first
    stateful child called after it."""
    ordered = [c for c in module.children.values() if _holds_state(c)]
    stateless = sorted((c for c in module.children.values() if not _holds_state(c)), key=_first_use)
    for child in stateless:
        at = next(
            (i for i, c in enumerate(ordered) if _first_use(c) > _first_use(child)), len(ordered)
        )
        ordered.insert(at, child)
    module.children = {c.attr: c for c in ordered}


def _holds_state(module: Module) -> bool:
    return any(m.state for m in module.walk())


def _first_use(module: Module) -> float:
    return min((call.nodes[0][0] for m in module.walk() for call in m.calls), default=float("inf"))


def partition(
    root: Module, module: Module, nodes: list[tuple[int, Node]], facts: ProgramFacts
) -> list:
    items: list = []
    i = 0
    while i < len(nodes):
        child_path = _child_path(nodes[i][1], module.path)
        if child_path is None:
            items.append(NodeItem(nodes[i][1], nodes[i][0]))
            i += 1
            continue
        j = i + 1
        while j < len(nodes) and _child_path(nodes[j][1], module.path) == child_path:
            j += 1
        child = root.ensure(child_path)
        call = make_call(child, nodes[i:j], facts)
        call.items = partition(root, child, call.nodes, facts)
        child.calls.append(call)
        items.append(ChildItem(call))
        i = j
    return items


def make_call(module: Module, nodes: list[tuple[int, Node]], facts: ProgramFacts) -> CallGroup:
    defined: set[str] = set()
    inputs: list[str] = []
    for _, node in nodes:
        for r in node_reads(node):
            if r not in defined and r not in inputs and facts.state_path_in(r, module.path) is None:
                inputs.append(r)
        defined.update(node_defines(node))
    end = nodes[-1][0]
    outputs = [
        r for _, node in nodes for r in node_defines(node) if facts.last_use.get(r, -1) > end
    ]
    return CallGroup(module, list(nodes), inputs, outputs)


def frames_of(node: Node) -> tuple[ModuleFrame, ...]:
    """The node's ``nn_module_stack``, outermost first (the parser leaves out export's
    placeholder frame for nodes it made itself)."""
    return _parse_frames(node.metadata.get("nn_module_stack"))


@functools.lru_cache(maxsize=4096)
def _parse_frames(text: str | None) -> tuple[ModuleFrame, ...]:
    # The stack is stored as text on every node; most nodes share a few distinct stacks.
    return tuple(parse_nn_module_stack(text))


def _child_path(node: Node, module_path: str) -> str | None:
    """The frame right below ``module_path`` in the node's stack, if it lies inside it."""
    fqns = [f.fqn for f in frames_of(node)]
    k = 0
    if module_path:
        try:
            k = fqns.index(module_path)
        except ValueError:
            return None
    while k < len(fqns) and fqns[k] == module_path:  # the module's own frames (calls of itself)
        k += 1
    if k >= len(fqns) or not under(fqns[k], module_path):
        return None
    return fqns[k]
