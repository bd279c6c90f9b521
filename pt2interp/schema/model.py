"""The typed model of an exported program: frozen dataclasses, no torch, no parsing.

Arguments are :class:`Argument` values: a ``kind`` (an :class:`~pt2interp.kinds.ArgKind`:
``tensor``, ``ints``, ``sym_int``, ``graph``, ...) and a ``value`` whose type the kind fixes
(``ArgKind.holds``). Named values in the graph (tensors, sym ints) are :class:`Ref`. Input and
output specs have an :class:`~pt2interp.kinds.InputKind` or :class:`~pt2interp.kinds.OutputKind`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pt2interp import versions
from pt2interp.kinds import ArgKind, InputKind, OutputKind, PassedAs
from pt2interp.schema.module_stack import ModuleFrame, parse_nn_module_stack
from pt2interp.symexpr import Expr
from pt2interp.treespec import TreeSpec


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to a named value of the graph (a tensor, sym int, token, custom object)."""

    name: str


@dataclass(frozen=True)
class SymExpr:
    """A symbolic integer: the parsed expression and the hint recorded at export."""

    expr: Expr
    hint: int | float | bool | None = None

    def __str__(self) -> str:
        return str(self.expr)


SymInt = int | SymExpr


@dataclass(frozen=True)
class Device:
    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def static_numel(sizes) -> int | None:
    """Element count of a shape, or None when a size is symbolic."""
    n = 1
    for s in sizes:
        if not isinstance(s, int):
            return None
        n *= s
    return n


def static_nbytes(sizes, dtype: str) -> int | None:
    n = static_numel(sizes)
    return None if n is None else n * versions.ITEMSIZE.get(dtype, 0)


@dataclass(frozen=True)
class TensorMeta:
    dtype: str
    sizes: tuple[SymInt, ...]
    strides: tuple[SymInt, ...]
    storage_offset: SymInt
    device: Device
    layout: str = "strided"
    requires_grad: bool = False

    @property
    def is_static(self) -> bool:
        return all(isinstance(s, int) for s in self.sizes)

    @property
    def numel(self) -> int | None:
        return static_numel(self.sizes)

    @property
    def nbytes(self) -> int | None:
        return static_nbytes(self.sizes, self.dtype)

    def example_sizes(self, unknown: int) -> list[int]:
        """The sizes seen at export: static ones as they are, a symbolic one's hint, and
        ``unknown`` where export recorded no hint."""
        return [
            s if isinstance(s, int) else (s.hint if type(s.hint) is int else unknown)
            for s in self.sizes
        ]


@dataclass(frozen=True)
class CustomObjRef:
    name: str
    class_fqn: str


@dataclass(frozen=True)
class GraphArgument:
    name: str
    graph: Graph


_set_field = object.__setattr__  # how a frozen dataclass sets its fields

# kind → what ``Argument.value`` holds
ARGUMENT_KINDS: dict[str, str] = {kind.value: kind.holds for kind in ArgKind}


@dataclass(frozen=True, slots=True, init=False)
class Argument:
    """One argument value; ``kind`` may be given by its spelling (``Argument("tensor", r)``).

    >>> Argument("tensors", (Ref("a"), Ref("b"))).refs(), Argument("ints", (1, 2)).refs()
    (['a', 'b'], [])
    """

    kind: ArgKind
    value: Any = None

    # Written out rather than generated with a __post_init__: one call less per argument on the
    # load path, which builds every argument of every node.
    def __init__(self, kind: ArgKind | str, value: Any = None):
        _set_field(self, "kind", kind if kind.__class__ is ArgKind else ArgKind(kind))
        _set_field(self, "value", value)

    def refs(self) -> list[str]:
        """Names of the graph values this argument reads."""
        return self.kind.refs(self.value)


@dataclass(frozen=True)
class NamedArgument:
    name: str
    arg: Argument
    # a PassedAs; None where the file does not say
    kind: int | None = None

    @property
    def is_keyword(self) -> bool:
        return self.kind == PassedAs.KEYWORD


@dataclass
class Node:
    target: str
    inputs: list[NamedArgument]
    outputs: list[Argument]
    metadata: dict[str, str]
    name: str | None = None
    is_hop_single_tensor_return: bool | None = None

    @property
    def stack_trace(self) -> str | None:
        return self.metadata.get("stack_trace")

    @property
    def hop_returns_one_tensor(self) -> bool:
        """For a higher-order op: it returns one tensor, not a sequence of outputs."""
        return self.is_hop_single_tensor_return is True

    @property
    def torch_fn(self) -> str | None:
        return self.metadata.get("torch_fn")

    @property
    def nn_module_stack(self) -> list[ModuleFrame]:
        return parse_nn_module_stack(self.metadata.get("nn_module_stack"))

    @property
    def label(self) -> str:
        """A name for messages: the node's own name or its first output's."""
        if self.name:
            return self.name
        for o in self.outputs:
            r = o.refs()
            if r:
                return r[0]
        return self.target


@dataclass
class Graph:
    inputs: list[Argument]
    outputs: list[Argument]
    nodes: list[Node]
    tensor_values: Mapping[
        str, TensorMeta
    ]  # a dict; in an outline, parsed entry by entry on demand
    sym_int_values: dict[str, SymInt] = field(default_factory=dict)
    sym_bool_values: dict[str, Any] = field(default_factory=dict)
    sym_float_values: dict[str, Any] = field(default_factory=dict)
    custom_obj_values: dict[str, CustomObjRef] = field(default_factory=dict)
    is_single_tensor_return: bool = False
    # An outline (see parse_exported_program) keeps of each node only its target, metadata,
    # name and subgraph arguments: enough to describe a program, not to run it.
    outline: bool = False
    # In an outline, the symbolic values that could not be read ({JSON path: why}): describing
    # a program never needs them, so they are reported rather than fatal.
    unreadable: dict[str, str] = field(default_factory=dict)

    def iter_nodes(self):
        """Every node, those of subgraphs included (depth first)."""
        for node in self.nodes:
            yield node
            for na in node.inputs:
                if na.arg.kind is ArgKind.GRAPH:
                    yield from na.arg.value.graph.iter_nodes()


@dataclass(frozen=True)
class InputSpec:
    """One graph input: ``kind`` is user_input, parameter, buffer, tensor_constant, custom_obj,
    token or constant_input; ``target`` the state-dict name for parameters, buffers and
    constants."""

    kind: InputKind
    arg: Argument
    target: str | None = None
    persistent: bool | None = None
    constant_value: Any = None
    name: str | None = None  # constant inputs: the argument's name

    def __post_init__(self):
        if self.kind.__class__ is not InputKind:
            object.__setattr__(self, "kind", InputKind(self.kind))


@dataclass(frozen=True)
class OutputSpec:
    kind: OutputKind
    arg: Argument
    target: str | None = None

    def __post_init__(self):
        if self.kind.__class__ is not OutputKind:
            object.__setattr__(self, "kind", OutputKind(self.kind))


@dataclass
class GraphSignature:
    input_specs: list[InputSpec]
    output_specs: list[OutputSpec]

    def inputs_of(self, *kinds: InputKind | str) -> list[InputSpec]:
        return [s for s in self.input_specs if s.kind in kinds]

    def outputs_of(self, *kinds: OutputKind | str) -> list[OutputSpec]:
        return [s for s in self.output_specs if s.kind in kinds]


@dataclass(frozen=True)
class RangeConstraint:
    min_val: int | None  # None: unbounded
    max_val: int | None


@dataclass
class ModuleCallSignature:
    inputs: list[Argument]
    outputs: list[Argument]
    in_spec: TreeSpec
    out_spec: TreeSpec
    forward_arg_names: list[str] | None = None


@dataclass
class ModuleCallEntry:
    fqn: str
    signature: ModuleCallSignature | None = None


@dataclass
class ExportedProgramModel:
    """The JSON program, typed. Weights live elsewhere (:mod:`pt2interp.weights`)."""

    graph: Graph
    signature: GraphSignature
    module_call_graph: list[ModuleCallEntry]
    range_constraints: dict[str, RangeConstraint]
    schema_version: tuple[int, int]
    opset_version: dict[str, int] = field(default_factory=dict)
    verifiers: list[str] = field(default_factory=list)
    torch_version: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    guards_code: list[str] = field(default_factory=list)

    @property
    def root_call(self) -> ModuleCallSignature | None:
        for entry in self.module_call_graph:
            if entry.fqn == "" and entry.signature is not None:
                return entry.signature
        return None

    @property
    def dialect(self) -> str:
        """``TRAINING`` (export's default IR) or ``ATEN`` (core ATen after decompositions)."""
        return self.verifiers[0] if self.verifiers else "ATEN"


@dataclass(frozen=True)
class PayloadMeta:
    path_name: str
    is_param: bool
    use_pickle: bool
    tensor_meta: TensorMeta | None


def _contiguous_strides(sizes: tuple) -> tuple:
    if not all(isinstance(s, int) for s in sizes):
        return ()
    strides, acc = [], 1
    for s in reversed(sizes):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))
