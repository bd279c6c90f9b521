"""The plain-shape fast path of the parser agrees with the checked parser.

``pt2interp.schema`` parses plain nodes, arguments and tensor metas without building JSON
paths and hands anything else to the checked parser. It must accept only what the checked
parser accepts and build equal values; these tests hold it to that on every fixture archive
and on generated near-misses.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pt2interp import schema, versions
from pt2interp.archive import open_archive
from pt2interp.errors import SchemaError
from pt2interp.schema import fastpath, parser
from tests.fixture_cases import all_cases

ARCHIVES = sorted({c.path for c in all_cases()})


def _program_json(path) -> dict:
    arc = open_archive(path)
    member = (
        "serialized_exported_program.json"
        if arc.layout == "legacy"
        else f"models/{arc.model_names[0]}.json"
    )
    return json.loads(arc.read_text(member))


def _graphs(graph: dict):
    yield graph
    for node in graph.get("nodes", []):
        for x in node.get("inputs", []):
            arg = x.get("arg") or {}
            if "as_graph" in arg:
                yield from _graphs(arg["as_graph"]["graph"])


def _parser(doc) -> parser._Parser:
    # the parser reads the newest form: older files are normalized first, as load does
    versions.normalize(doc, schema.schema_version_of(doc, "model.json"))
    return parser._Parser("model.json")


def _same(a, b) -> bool:
    # repr compares NaN floats as equal, which == does not
    return type(a) is type(b) and repr(a) == repr(b)


@pytest.mark.parametrize("path", ARCHIVES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fast_path_builds_what_the_checked_parser_builds(path):
    doc = _program_json(path)
    p = _parser(doc)
    for graph in _graphs(doc["graph_module"]["graph"]):
        for i, raw in enumerate(graph["nodes"]):
            fast = fastpath._plain_node(raw)
            if fast is not None:
                assert _same(fast, p.checked_node(raw, f"nodes[{i}]", 0))
            for x in raw["inputs"]:
                fast_arg = fastpath._plain_argument(x["arg"])
                if fast_arg is not None:
                    assert _same(fast_arg, p.checked_argument(x["arg"], "arg"))
        for name, meta in graph.get("tensor_values", {}).items():
            key = fastpath._plain_meta_key(meta)
            if key is not None:
                assert _same(fastpath._meta_from_key(key), p._tensor_meta(meta, name))


def test_fast_path_is_the_common_path():
    """Nearly every node and tensor meta of real files is plain (else the fast path is dead
    weight)."""
    nodes = plain_nodes = metas = plain_metas = 0
    for path in ARCHIVES:
        for graph in _graphs(_program_json(path)["graph_module"]["graph"]):
            nodes += len(graph["nodes"])
            plain_nodes += sum(fastpath._plain_node(n) is not None for n in graph["nodes"])
            metas += len(graph.get("tensor_values", {}))
            plain_metas += sum(
                fastpath._plain_meta_key(m) is not None
                for m in graph.get("tensor_values", {}).values()
            )
    assert plain_nodes >= 0.9 * nodes and plain_metas >= 0.95 * metas, (
        plain_nodes,
        nodes,
        plain_metas,
        metas,
    )


def test_fast_path_covers_the_weights_config():
    path = next(p for p in ARCHIVES if p.parent.name == "zoo")
    arc = open_archive(path)
    member = next(n for n in arc.list("") if n.endswith("_weights_config.json"))
    doc = json.loads(arc.read_text(member))
    p = parser._Parser(member)
    for fqn, md in doc["config"].items():
        fast = fastpath._plain_payload_meta(md, p)
        assert fast is not None, fqn
        checked = schema.PayloadMeta(
            md["path_name"],
            bool(md.get("is_param")),
            bool(md.get("use_pickle")),
            p._tensor_meta(md["tensor_meta"], fqn),
        )
        assert _same(fast, checked)


# -- near-misses -----------------------------------------------------------------------------------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=True),
    st.text(max_size=4),
    st.sampled_from(["as_int", "as_name", "name", "cpu"]),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                ["name", "as_int", "as_name", "as_tensor", "as_none", "type", "index", "x"]
            ),
            inner,
            max_size=2,
        ),
    ),
    max_leaves=6,
)

_TAGS = [
    "as_tensor",
    "as_none",
    "as_int",
    "as_ints",
    "as_float",
    "as_bool",
    "as_tensors",
    "as_string",
    "as_scalar_type",
    "as_sym_int",
    "as_sym_ints",
    "as_optional_tensors",
    "as_symint",
    "as_device",
]


def _checked_or_error(fn):
    try:
        return fn()
    except SchemaError as exc:
        return exc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tag=st.sampled_from(_TAGS), value=_json, extra=st.booleans())
def test_fast_argument_never_accepts_what_the_checked_parser_refuses(tag, value, extra):
    raw = {tag: value, "as_none": None} if extra and tag != "as_none" else {tag: value}
    p = parser._Parser("m.json")
    fast = fastpath._plain_argument(raw)
    if fast is None:
        return
    checked = _checked_or_error(lambda: p.checked_argument(raw, "arg"))
    assert not isinstance(checked, SchemaError), (
        f"fast path accepted {raw!r}, the checked parser says {checked}"
    )
    assert _same(fast, checked)


_size = st.one_of(st.fixed_dictionaries({"as_int": st.integers(-2, 2**64)}), _json)
_meta = st.fixed_dictionaries(
    {"dtype": st.one_of(st.integers(-1, 50), _json), "sizes": st.lists(_size, max_size=3)},
    optional={
        "strides": st.lists(_size, max_size=3),
        "storage_offset": st.one_of(st.integers(-1, 2**64), _size, _json),
        "device": st.one_of(
            st.fixed_dictionaries(
                {"type": st.text(max_size=3)}, optional={"index": st.one_of(st.integers(), _json)}
            ),
            _json,
        ),
        "layout": st.one_of(st.integers(0, 9), _json),
        "requires_grad": st.one_of(st.booleans(), _json),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=_meta)
def test_fast_meta_never_accepts_what_the_checked_parser_refuses(meta):
    key = fastpath._plain_meta_key(meta)
    if key is None:
        return
    p = parser._Parser("m.json")
    checked = _checked_or_error(lambda: p._tensor_meta(meta, "meta"))
    assert not isinstance(checked, SchemaError), (
        f"fast path accepted {meta!r}, the checked parser says {checked}"
    )
    assert _same(fastpath._meta_from_key(key), checked)


def test_floats_keep_their_value():
    arg = fastpath._plain_argument({"as_float": 3})
    assert arg == schema.Argument("float", 3.0) and isinstance(arg.value, float)
    assert math.isinf(fastpath._plain_argument({"as_float": float("inf")}).value)


def test_an_outline_describes_but_does_not_run(tmp_path):
    """``read_program(outline=True)`` (what read_schema reads) keeps targets, metadata and
    subgraphs, skips node arguments, and is refused by the interpreter and codegen."""
    import pt2interp
    from pt2interp.codegen import to_python
    from pt2interp.interpreter import GraphCompiler
    from tests.fixture_cases import case

    path = case("zoo", "cond").path
    full, outline = pt2interp.read_program(path), pt2interp.read_program(path, outline=True)
    assert outline.graph.outline and not full.graph.outline
    assert [n.target for n in outline.graph.iter_nodes()] == [
        n.target for n in full.graph.iter_nodes()
    ]
    assert [n.metadata for n in outline.graph.nodes] == [n.metadata for n in full.graph.nodes]
    assert any(n.inputs for n in outline.graph.nodes)  # the cond node keeps its two branches
    assert all(na.arg.kind == "graph" for n in outline.graph.nodes for na in n.inputs)
    with pytest.raises(pt2interp.GraphError, match="outline"):
        GraphCompiler(member=str(path)).compile(outline.graph)
    with pytest.raises(pt2interp.GraphError, match="outline"):
        to_python(outline)


def test_an_outline_checks_tensor_metadata_when_asked_for_it():
    from tests.fixture_cases import case

    doc = _program_json(case("zoo", "mlp").path)
    doc["graph_module"]["graph"]["tensor_values"]["linear"]["sizes"][0] = {"as_int": -3}
    outline = schema.parse_exported_program(doc, "model.json", outline=True)
    assert outline.graph.tensor_values["x"].sizes == (4, 16)
    with pytest.raises(
        SchemaError, match=r"graph_module\.graph\.tensor_values\.linear\.sizes\[0\].*negative"
    ):
        outline.graph.tensor_values["linear"]
    with pytest.raises(SchemaError, match="negative"):
        schema.parse_exported_program(doc, "model.json")
