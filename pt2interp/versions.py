"""What differs between schema versions, in one place.

Every difference between what older torch releases wrote and what the newest one writes is a
named :class:`Normalizer` here. :func:`normalize` applies, in one walk over the decoded program
JSON, those that concern the file's schema version, rewriting the older spellings into the
newest; the parser in :mod:`pt2interp.schema` then reads only the newest form. A file written
by a release that needs none of them is not walked at all.

To support a new quirk: add a ``Normalizer`` to ``NORMALIZERS`` with the first version that no
longer needs it, and a test with a file (or a JSON edit) that shows it.

The format's enumerations (ScalarType numbers, layouts, memory formats) live here too: they
grow from release to release, and each number keeps its meaning once given.

Sources: torch's serde schema history (see FORMAT-NOTES in the project docs) and archives
written by torch 2.3 to 2.15.

>>> doc = {"schema_version": {"major": 5, "minor": 1}, "torch_version": "<=2.4"}
>>> [n.name for n in applicable((5, 1))]  # doctest: +NORMALIZE_WHITESPACE
['bare_optional_tensor_names', 'effect_token_arguments', 'unrecorded_input_kinds',
 'unrecorded_hop_single_tensor_return', 'placeholder_torch_version', 'dialect_as_verifiers',
 'spelled_unbounded_ranges']
>>> normalize(doc, (5, 1)) is doc, "torch_version" in doc
(True, False)
>>> [n.name for n in applicable(NEWEST_KNOWN)]
['placeholder_torch_version', 'spelled_unbounded_ranges']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pt2interp.kinds import PassedAs

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


# A program JSON without a ``schema_version`` (torch 2.1) is schema 1, which is not supported.
VERSION_WHEN_UNRECORDED = (1, 0)


# -- normalizers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalizer:
    """One difference of older files, and how to rewrite it into the newest form.

    ``before``: the first schema version that no longer needs it (None: any file may need it;
    only cheap, whole-document rewrites are that). A normalizer rewrites at one of three places:
    ``document`` (the top-level object), ``node`` (each graph node, subgraphs included) or
    ``union`` (each one-key union object, ``{tag: value}``, wherever it stands; it returns the
    replacement ``(tag, value)``, or None to leave it)."""

    name: str
    why: str
    before: tuple[int, int] | None = None
    document: Callable[[dict], None] | None = None
    node: Callable[[dict], None] | None = None
    union: Callable[[str, Any], tuple[str, Any] | None] | None = None


def _bare_optional_tensor_name(tag: str, value: Any) -> tuple[str, Any] | None:
    if tag == "as_tensor" and isinstance(value, str):
        return tag, {"name": value}
    return None


_TOKEN_TAGS = {"as_token": "as_tensor", "as_tokens": "as_tensors"}


def _effect_token_argument(tag: str, value: Any) -> tuple[str, Any] | None:
    new = _TOKEN_TAGS.get(tag)
    return None if new is None else (new, value)


def unrecorded_input_kind(target: str, name: str) -> int | None:
    """The kind of a node input written before kinds were recorded. A higher-order op has no
    schema, so its keyword arguments were its named inputs and its positional ones unnamed
    (torch's ``serialize_hoo_inputs``); ATen ops and Python operators name every input, and
    their schema or signature says which are positional (None: not known from the file)."""
    if name and target.startswith("torch.ops.higher_order."):
        return PassedAs.KEYWORD.value  # the parser reads the plain int a newer file holds
    return None


def _record_input_kinds(node: dict) -> None:
    target = node.get("target")
    if not isinstance(target, str):
        return  # the parser names the bad target
    for x in node.get("inputs") or ():
        if isinstance(x, dict) and type(x.get("kind")) is not int:
            name = x.get("name", "")
            x["kind"] = unrecorded_input_kind(target, name) if isinstance(name, str) else None


# out_dtype returns its op's tensor; cond, while_loop, map, scan and the wrappers a list.
_HOPS_RETURNING_ONE_TENSOR = frozenset({"torch.ops.higher_order.out_dtype"})


def _record_hop_single_tensor_return(node: dict) -> None:
    if not isinstance(node.get("is_hop_single_tensor_return"), bool):
        node["is_hop_single_tensor_return"] = node.get("target") in _HOPS_RETURNING_ONE_TENSOR


def _drop_placeholder_torch_version(doc: dict) -> None:
    if doc.get("torch_version") == "<=2.4":
        del doc["torch_version"]


def _dialect_as_verifiers(doc: dict) -> None:
    if not isinstance(doc.get("verifiers"), list):
        dialect = doc.get("dialect")
        doc["verifiers"] = [dialect] if isinstance(dialect, str) and dialect else []


def _is_unbounded(v: Any) -> bool:
    if isinstance(v, str):
        return v in SPECIAL_FLOATS
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return True
    return type(v) in (int, float) and abs(v) >= UNBOUNDED_THRESHOLD


def _unbounded_as_null(doc: dict) -> None:
    constraints = doc.get("range_constraints")
    if not isinstance(constraints, dict):
        return
    for r in constraints.values():
        if isinstance(r, dict):
            for key in ("min_val", "max_val"):
                if _is_unbounded(r.get(key)):
                    r[key] = None


NORMALIZERS: tuple[Normalizer, ...] = (
    Normalizer(
        "bare_optional_tensor_names",
        "before 5.3 (torch 2.3) an optional tensor's as_tensor held the bare name, not {name}",
        before=(5, 3),
        union=_bare_optional_tensor_name,
    ),
    Normalizer(
        "effect_token_arguments",
        "torch 2.4/2.5 wrote effect tokens in graph inputs and outputs as as_token(s)",
        before=(8, 0),
        union=_effect_token_argument,
    ),
    Normalizer(
        "unrecorded_input_kinds",
        "node inputs record positional/keyword from 8.7 (torch 2.7); before, the kind is "
        "derived from the target and the input's name",
        before=(8, 7),
        node=_record_input_kinds,
    ),
    Normalizer(
        "unrecorded_hop_single_tensor_return",
        "is_hop_single_tensor_return is recorded from 8.7 (torch 2.7); before, it is the op's own",
        before=(8, 7),
        node=_record_hop_single_tensor_return,
    ),
    Normalizer(
        "placeholder_torch_version",
        'torch_version "<=2.4" is a placeholder, not a release',
        document=_drop_placeholder_torch_version,
    ),
    Normalizer(
        "dialect_as_verifiers",
        "verifiers replace dialect from 7.3 (torch 2.5)",
        before=(8, 0),
        document=_dialect_as_verifiers,
    ),
    Normalizer(
        "spelled_unbounded_ranges",
        "an unbounded range is null from 8.2 (torch 2.6); releases wrote int_oo as a huge int, "
        "Infinity, or (2.7+) the string 'Infinity'",
        document=_unbounded_as_null,
    ),
)


def applicable(version: tuple[int, int]) -> list[Normalizer]:
    """The normalizers a file of this schema version needs, in the order they apply."""
    return [n for n in NORMALIZERS if n.before is None or version < n.before]


def normalize(doc: dict, version: tuple[int, int]) -> dict:
    """Rewrite ``doc`` (a decoded program JSON, changed in place and returned) into the newest
    form, applying every normalizer its version needs in one walk."""
    chosen = applicable(version)
    for n in chosen:
        if n.document is not None:
            n.document(doc)
    node_fixes = [n.node for n in chosen if n.node is not None]
    union_fixes = [n.union for n in chosen if n.union is not None]
    if node_fixes or union_fixes:
        graph_module = doc.get("graph_module")
        if isinstance(graph_module, dict):
            _walk(graph_module, node_fixes, union_fixes, 0)
    return doc


_MAX_WALK_DEPTH = 256  # deeper JSON is refused by the parser's own depth limits
# Parts of a graph that hold neither nodes nor arguments: not walked (most of a file's bulk).
_NOT_WALKED = frozenset(
    {"tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values", "metadata"}
)


def _walk(value: Any, node_fixes: list, union_fixes: list, depth: int) -> None:
    if depth > _MAX_WALK_DEPTH:
        return
    if isinstance(value, list):
        for x in value:
            _walk(x, node_fixes, union_fixes, depth + 1)
        return
    if not isinstance(value, dict):
        return
    if union_fixes and len(value) == 1:
        ((tag, inner),) = value.items()
        if isinstance(tag, str) and tag.startswith("as_"):
            for fix in union_fixes:
                new = fix(tag, inner)
                if new is not None:
                    value.clear()
                    tag, inner = new
                    value[tag] = inner
    nodes = value.get("nodes")
    if node_fixes and isinstance(nodes, list) and "inputs" in value:
        for node in nodes:
            if isinstance(node, dict):
                for fix in node_fixes:
                    fix(node)
    for key, x in value.items():
        if isinstance(x, (dict, list)) and key not in _NOT_WALKED:
            _walk(x, node_fixes, union_fixes, depth + 1)
