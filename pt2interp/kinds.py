"""The kinds an exported program speaks of, each named once with what it means.

An argument of a node or graph has a kind (``tensor``, ``ints``, ``graph``, ...): :class:`ArgKind`
says its JSON union tag, what its value holds, whether it is a list and of which element kind,
and which graph values it reads. An input or output spec of the signature has a kind
(``parameter``, ``user_output``, ...): :class:`InputKind` and :class:`OutputKind` say whether it
is state, which JSON key holds its state-dict name, whether the caller sees it. The parser, the
interpreter, codegen and serving ask these tables, so a new kind is one entry here (and, for an
argument kind, one way to parse, run and write it where those are kept). How a node passes each
input, positionally or by keyword, is :class:`PassedAs`.

The string enums derive from ``str``: a member equals its spelling in the archive, so parsed specs
compare equal to the strings torch writes.

>>> InputKind("buffer").is_state, InputKind.USER_INPUT.is_state
(True, False)
>>> InputKind.PARAMETER.target_field
'parameter_name'
>>> [k.value for k in OutputKind if k.mutates]
['buffer_mutation', 'parameter_mutation', 'user_input_mutation']
>>> ArgKind.INT_LISTS.tag, ArgKind.INT_LISTS.element, ArgKind.INT_LISTS.leaf
('as_int_lists', <ArgKind.INTS: 'ints'>, <ArgKind.INT: 'int'>)
>>> ArgKind.of_tag("as_sym_ints").leaf.holds_ref, ArgKind.of_tag("as_bogus") is None
(True, True)
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, IntEnum
from typing import Any


class InputKind(str, Enum):
    """What feeds one graph input."""

    USER_INPUT = "user_input"
    PARAMETER = "parameter"
    BUFFER = "buffer"
    TENSOR_CONSTANT = "tensor_constant"
    CUSTOM_OBJ = "custom_obj"
    TOKEN = "token"
    CONSTANT_INPUT = "constant_input"

    def __str__(self) -> str:
        return self.value

    @property
    def target_field(self) -> str | None:
        """The spec's JSON key that holds the state-dict name (None: it has no name)."""
        return _INPUT_TARGET_FIELDS[self]

    @property
    def is_state(self) -> bool:
        """Held by the program (weights, constants, script objects), not given by the caller."""
        return self in STATE_INPUT_KINDS

    @property
    def is_passed(self) -> bool:
        """The caller passes it: a user input, or a constant input (its recorded value when
        not given). One leaf of the call each, in the signature's order."""
        return self in PASSED_INPUT_KINDS

    @property
    def is_state_tensor(self) -> bool:
        """State that is a tensor: what a ``state_dict`` holds (script objects are not)."""
        return self in STATE_TENSOR_INPUT_KINDS


class OutputKind(str, Enum):
    """What one graph output is for."""

    USER_OUTPUT = "user_output"
    LOSS_OUTPUT = "loss_output"
    BUFFER_MUTATION = "buffer_mutation"
    PARAMETER_MUTATION = "parameter_mutation"
    GRADIENT_TO_PARAMETER = "gradient_to_parameter"
    GRADIENT_TO_USER_INPUT = "gradient_to_user_input"
    USER_INPUT_MUTATION = "user_input_mutation"
    TOKEN = "token"

    def __str__(self) -> str:
        return self.value

    @property
    def target_field(self) -> str | None:
        """The spec's JSON key that names what the output writes or belongs to."""
        return _OUTPUT_TARGET_FIELDS[self]

    @property
    def mutates(self) -> bool:
        """The output is a new value for state or for a user input, written back after a run."""
        return self in _MUTATION_OUTPUT_KINDS

    @property
    def is_returned(self) -> bool:
        """The caller receives it (user outputs and the loss)."""
        return self in RETURNED_OUTPUT_KINDS


_INPUT_TARGET_FIELDS: dict[InputKind, str | None] = {
    InputKind.USER_INPUT: None,
    InputKind.PARAMETER: "parameter_name",
    InputKind.BUFFER: "buffer_name",
    InputKind.TENSOR_CONSTANT: "tensor_constant_name",
    InputKind.CUSTOM_OBJ: "custom_obj_name",
    InputKind.TOKEN: None,
    InputKind.CONSTANT_INPUT: None,
}

_OUTPUT_TARGET_FIELDS: dict[OutputKind, str | None] = {
    OutputKind.USER_OUTPUT: None,
    OutputKind.LOSS_OUTPUT: None,
    OutputKind.BUFFER_MUTATION: "buffer_name",
    OutputKind.PARAMETER_MUTATION: "parameter_name",
    OutputKind.GRADIENT_TO_PARAMETER: "parameter_name",
    OutputKind.GRADIENT_TO_USER_INPUT: "user_input_name",
    OutputKind.USER_INPUT_MUTATION: "user_input_name",
    OutputKind.TOKEN: None,
}

STATE_INPUT_KINDS = frozenset(
    {InputKind.PARAMETER, InputKind.BUFFER, InputKind.TENSOR_CONSTANT, InputKind.CUSTOM_OBJ}
)
STATE_TENSOR_INPUT_KINDS = STATE_INPUT_KINDS - {InputKind.CUSTOM_OBJ}
PASSED_INPUT_KINDS = frozenset({InputKind.USER_INPUT, InputKind.CONSTANT_INPUT})
RETURNED_OUTPUT_KINDS = frozenset({OutputKind.USER_OUTPUT, OutputKind.LOSS_OUTPUT})
_MUTATION_OUTPUT_KINDS = frozenset(
    {OutputKind.BUFFER_MUTATION, OutputKind.PARAMETER_MUTATION, OutputKind.USER_INPUT_MUTATION}
)


# How the leaf kinds of ArgKind hold their value (list kinds take their element's).
_LITERAL = "literal"  # the Python constant itself
_REF = "ref"  # a graph value's Ref; optional and symbolic kinds: or a constant in its place
_NAMED = "named"  # a named graph value that is not a Ref (a CustomObjRef)
_OWN = "own"  # a value of its own type (a dtype name, a device, a subgraph, ...)
_LIST = "list"  # a tuple of its element kind's values


class ArgKind(str, Enum):
    """What one argument of a node, graph or module call signature is.

    The value is the archive's union tag without ``as_``. List kinds name their ``element``
    kind, so a nested list (``int_lists``) is a list of a list kind (``ints``); ``leaf`` is the
    innermost element kind (the kind itself for kinds that are no list).

    >>> from pt2interp.schema import Ref
    >>> ArgKind.TENSORS.refs((Ref("a"), Ref("b"))), ArgKind.SYM_INT.refs(3)
    (['a', 'b'], [])
    """

    # member = value, what Argument.value holds, how, element kind (list kinds)
    NONE = "none", "None", _LITERAL
    TENSOR = "tensor", "Ref", _REF
    TENSORS = "tensors", "tuple[Ref, ...]", _LIST, "tensor"
    OPTIONAL_TENSOR = "optional_tensor", "Ref | None", _REF
    OPTIONAL_TENSORS = "optional_tensors", "tuple[Ref | None, ...]", _LIST, "optional_tensor"
    NESTED_TENSORS = "nested_tensors", "tuple[tuple[Ref, ...], ...]", _LIST, "tensors"
    INT = "int", "int", _LITERAL
    INTS = "ints", "tuple[int, ...]", _LIST, "int"
    INT_LISTS = "int_lists", "tuple[tuple[int, ...], ...]", _LIST, "ints"
    FLOAT = "float", "float", _LITERAL
    FLOATS = "floats", "tuple[float, ...]", _LIST, "float"
    FLOAT_LISTS = "float_lists", "tuple[tuple[float, ...], ...]", _LIST, "floats"
    BOOL = "bool", "bool", _LITERAL
    BOOLS = "bools", "tuple[bool, ...]", _LIST, "bool"
    STRING = "string", "str", _LITERAL
    STRINGS = "strings", "tuple[str, ...]", _LIST, "string"
    COMPLEX = "complex", "complex", _LITERAL
    SYM_INT = "sym_int", "Ref | int", _REF
    SYM_INTS = "sym_ints", "tuple[Ref | int, ...]", _LIST, "sym_int"
    SYM_FLOAT = "sym_float", "Ref | float", _REF
    SYM_FLOATS = "sym_floats", "tuple[Ref | float, ...]", _LIST, "sym_float"
    SYM_BOOL = "sym_bool", "Ref | bool", _REF
    SYM_BOOLS = "sym_bools", "tuple[Ref | bool, ...]", _LIST, "sym_bool"
    SCALAR_TYPE = "scalar_type", "str (dtype name)", _OWN
    MEMORY_FORMAT = "memory_format", "str", _OWN
    LAYOUT = "layout", "str", _OWN
    DEVICE = "device", "Device", _OWN
    GRAPH = "graph", "GraphArgument", _OWN
    CUSTOM_OBJ = "custom_obj", "CustomObjRef", _NAMED
    OPERATOR = "operator", "str (target)", _OWN
    STRING_TO_ARGUMENT = "string_to_argument", "dict[str, Argument]", _OWN

    # The facts are plain attributes, set once below: consumers read them on every argument.
    holds: str  # what Argument.value holds, for readers
    tag: str  # the key of the archive's Argument union: as_<value>
    element: ArgKind | None  # list kinds: the kind of each item
    leaf: ArgKind  # the innermost element kind
    holds_ref: bool  # a Ref to a graph value (optional and symbolic kinds: or a constant)
    names_value: bool  # one named graph value: holds_ref kinds and custom objects
    is_literal: bool  # the Python constant itself (None, int, float, bool, str, complex)
    refs: Callable[[Any], list[str]]  # value → names of the graph values it reads

    def __new__(cls, value: str, holds: str, how: str, element: str | None = None):
        member = str.__new__(cls, value)
        member._value_ = value
        member.holds = holds
        member.tag = "as_" + value
        member._how = how
        member._element_value = element
        return member

    def __str__(self) -> str:
        return self.value

    @property
    def is_list(self) -> bool:
        """The value is a tuple of ``element`` values."""
        return self.element is not None

    @classmethod
    def of_tag(cls, tag: str) -> ArgKind | None:
        """The kind of an Argument union tag (``as_tensor``), None for a tag no kind has."""
        return _ARG_KINDS_BY_TAG.get(tag)


def _reads_nothing(value: Any) -> list[str]:
    return []


def _reads_name(value: Any) -> list[str]:
    # a Ref or CustomObjRef; optional and symbolic kinds may hold a constant instead
    name = getattr(value, "name", None)
    return [] if name is None else [name]


def _reads_names(values: Any) -> list[str]:
    return [name for x in values if (name := getattr(x, "name", None)) is not None]


def _reads_nested_names(lists: Any) -> list[str]:
    return [name for inner in lists for name in _reads_names(inner)]


def _reads_arguments(arguments: Any) -> list[str]:
    return [name for argument in arguments.values() for name in argument.refs()]


def _reader(kind: ArgKind) -> Callable[[Any], list[str]]:
    if kind is ArgKind.STRING_TO_ARGUMENT:
        return _reads_arguments
    if kind.names_value:
        return _reads_name
    if kind.is_list and kind.leaf.holds_ref:
        return _reads_names if kind.element is kind.leaf else _reads_nested_names
    return _reads_nothing


for _kind in ArgKind:
    _kind.element = None if _kind._element_value is None else ArgKind(_kind._element_value)
    _kind.holds_ref = _kind._how == _REF
    _kind.names_value = _kind._how in (_REF, _NAMED)
    _kind.is_literal = _kind._how == _LITERAL
for _kind in ArgKind:
    _leaf = _kind
    while _leaf.element is not None:
        _leaf = _leaf.element
    _kind.leaf = _leaf
    _kind.refs = _reader(_kind)
del _kind, _leaf

_ARG_KINDS_BY_TAG: dict[str, ArgKind] = {kind.tag: kind for kind in ArgKind}


class PassedAs(IntEnum):
    """How a node passes one input (torch's ``ArgumentKind``, recorded from schema 8.7; for
    older files :mod:`pt2interp.versions` derives it)."""

    POSITIONAL = 1
    KEYWORD = 2
