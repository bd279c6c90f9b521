"""What differs between schema versions, in one place.

The parser in :mod:`pt2interp.schema` reads every version through these tables instead of
scattering version checks. Sources: torch's serde schema history (see FORMAT-NOTES in the
project docs) and archives written by torch 2.3 to 2.13.
"""

from __future__ import annotations

# Schema majors this reader understands. 5 (torch 2.3/2.4), 7 (2.5), 8 (2.6 and later).
# Majors 3, 4 and 6 were never released in a torch version but share the same shapes.
SUPPORTED_MAJORS = frozenset({3, 4, 5, 6, 7, 8})
NEWEST_KNOWN = (8, 20)

# ScalarType numbers → torch dtype names (without "torch.").
SCALAR_TYPES: dict[int, str] = {
    1: "uint8",
    2: "int8",
    3: "int16",
    4: "int32",
    5: "int64",
    6: "float16",
    7: "float32",
    8: "float64",
    9: "complex32",
    10: "complex64",
    11: "complex128",
    12: "bool",
    13: "bfloat16",
    28: "uint16",
    29: "float8_e4m3fn",
    30: "float8_e5m2",
    31: "float8_e4m3fnuz",
    32: "float8_e5m2fnuz",
    33: "float8_e8m0fnu",
    34: "uint32",
    35: "uint64",
}

# Bytes per element of each dtype name.
ITEMSIZE: dict[str, int] = {
    "uint8": 1,
    "int8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "float16": 2,
    "float32": 4,
    "float64": 8,
    "complex32": 4,
    "complex64": 8,
    "complex128": 16,
    "bool": 1,
    "bfloat16": 2,
    "uint16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "uint32": 4,
    "uint64": 8,
}

LAYOUTS: dict[int, str] = {
    0: "unknown",
    1: "sparse_coo",
    2: "sparse_csr",
    3: "sparse_csc",
    4: "sparse_bsr",
    5: "sparse_bsc",
    6: "_mkldnn",
    7: "strided",
}

MEMORY_FORMATS: dict[int, str] = {
    0: "unknown",
    1: "contiguous_format",
    2: "channels_last",
    3: "channels_last_3d",
    4: "preserve_format",
}

# Argument union tags, old spelling → current spelling. Unions in schema 1/2 were written
# with every tag present; from 5.1 on a union is a one-key object. Both reach the same tags.
ARGUMENT_TAG_RENAMES: dict[str, str] = {
    "as_symint": "as_sym_int",
    "as_symints": "as_sym_ints",
}

# Signature field spellings, old → current.
SIGNATURE_RENAMES: dict[str, str] = {}

# Whether a higher-order op returns one tensor rather than a sequence of outputs: archives record
# it per node (is_hop_single_tensor_return) in newer releases; for older ones it is the op's own
# (out_dtype returns its op's tensor; cond, while_loop, map, scan, the wrappers a list).
_HOPS_RETURNING_ONE_TENSOR = frozenset({"torch.ops.higher_order.out_dtype"})


def hop_returns_one_tensor(target: str, recorded: bool | None) -> bool:
    return recorded if recorded is not None else target in _HOPS_RETURNING_ONE_TENSOR


# Node input kinds, recorded from torch 2.7 on (NamedArgument.kind).
INPUT_KIND_POSITIONAL, INPUT_KIND_KEYWORD = 1, 2


def unrecorded_input_kind(target: str, name: str) -> int | None:
    """The kind of a node input written before kinds were recorded. A higher-order op has no
    schema, so its keyword arguments were its named inputs and its positional ones unnamed
    (torch's ``serialize_hoo_inputs``); ATen ops and Python operators name every input, and
    their schema or signature says which are positional (None: not known from the file)."""
    if name and target.startswith("torch.ops.higher_order."):
        return INPUT_KIND_KEYWORD
    return None


# Floats that JSON cannot spell: torch 2.7+ writes these strings; older files the bare tokens
# that Python's json module already accepts.
SPECIAL_FLOATS: dict[str, float] = {
    "Infinity": float("inf"),
    "-Infinity": float("-inf"),
    "NaN": float("nan"),
}

# Range-constraint bounds at or beyond these magnitudes mean "unbounded" (torch writes int_oo
# as a huge int in some versions, infinity floats in others).
UNBOUNDED_THRESHOLD = 2**62


PT2_MODELS_DIR = "models/"
PT2_WEIGHTS_DIR = "data/weights/"
PT2_CONSTANTS_DIR = "data/constants/"
PT2_SAMPLE_INPUTS_DIR = "data/sample_inputs/"
PT2_AOTI_DIR = "data/aotinductor/"
PT2_EXTRA_DIR = "extra/"
PT2_WEIGHTS_CONFIG = "data/weights/{}_weights_config.json"
PT2_CONSTANTS_CONFIG = "data/constants/{}_constants_config.json"
PT2_PICKLED_WEIGHTS = "data/weights/{}.pt"  # torch 2.8
PT2_PICKLED_CONSTANTS = "data/constants/{}.pt"  # torch 2.8

LEGACY_PROGRAM = "serialized_exported_program.json"
LEGACY_STATE_DICT = ("serialized_state_dict.pt", "serialized_state_dict.json")
LEGACY_CONSTANTS = ("serialized_constants.pt", "serialized_constants.json")
LEGACY_EXAMPLE_INPUTS = "serialized_example_inputs.pt"
LEGACY_VERSION = "version"
LEGACY_MODEL_NAME = "model"
