"""The kinds a program's signature speaks of, each named once with what it means.

An input or output spec of an exported program has a kind (``parameter``, ``user_output``,
...). Everything that asks a question about a kind (is it state? which JSON key holds its
state-dict name? does the caller see it?) asks this table, so a new kind is one entry here.

The enums derive from ``str``: a member equals its spelling in the archive, so parsed specs
compare equal to the strings torch writes.

>>> InputKind("buffer").is_state, InputKind.USER_INPUT.is_state
(True, False)
>>> InputKind.PARAMETER.target_field
'parameter_name'
>>> [k.value for k in OutputKind if k.mutates]
['buffer_mutation', 'parameter_mutation', 'user_input_mutation']
"""

from __future__ import annotations

from enum import Enum


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
RETURNED_OUTPUT_KINDS = frozenset({OutputKind.USER_OUTPUT, OutputKind.LOSS_OUTPUT})
_MUTATION_OUTPUT_KINDS = frozenset(
    {OutputKind.BUFFER_MUTATION, OutputKind.PARAMETER_MUTATION, OutputKind.USER_INPUT_MUTATION}
)
