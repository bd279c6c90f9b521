"""Issue: schema introspection — read_schema agrees with torch, never imports torch, never reads
weights."""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import math
import re
import subprocess
import sys
import typing
import zipfile

import pytest
import torch
from conftest import CASES
from fixture_cases import FIXTURES, case
from helpers import member_named, record_member_reads, rewrite_zip, weight_members

import pt2interp
from pt2interp.introspect import SymbolicDim

sys.path.insert(0, str(FIXTURES.parent))  # fixtures.zoo: the exporting modules

# ScalarType numbers as torch's serde schema defines them (kept apart from pt2interp.versions so
# that the reference does not share the code under test)
_SERDE_DTYPES = {
    1: "uint8",
    2: "int8",
    3: "int16",
    4: "int32",
    5: "int64",
    6: "float16",
    7: "float32",
    8: "float64",
    12: "bool",
    13: "bfloat16",
}
_BIG = 2**62


# ----------------------------------------------------------------------------------------------
# The reference: torch's own view of the program, or the raw JSON where torch refuses the file
# ----------------------------------------------------------------------------------------------


@functools.cache
def _torch_program(path):
    """``torch.export.load(path)``, or None where this torch refuses the file (older schema
    majors)."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)  # torch logs a traceback before falling back to the old format
    try:
        with _memoized_type_hints():
            return torch.export.load(path)
    except Exception:  # noqa: BLE001 - torch raises RuntimeError, SerializeError, ... for old files
        return None
    finally:
        logger.setLevel(level)


_TYPE_HINTS: dict = {}


@contextlib.contextmanager
def _memoized_type_hints():
    """Speed only: torch's JSON deserializer calls ``typing.get_type_hints`` on its schema
    classes for every JSON object, which is over half of ``torch.export.load``'s time. The
    classes never change, so the answers are kept while torch loads (and restored after)."""
    real = typing.get_type_hints

    def memoized(obj, globalns=None, localns=None, include_extras=False):
        key = (obj, id(globalns), id(localns), include_extras)
        if key not in _TYPE_HINTS:
            _TYPE_HINTS[key] = real(obj, globalns, localns, include_extras)
        return _TYPE_HINTS[key]

    typing.get_type_hints = memoized
    try:
        yield
    finally:
        typing.get_type_hints = real


def _reference_from_torch(ep) -> dict:
    """Names, shapes, dtypes, persistence and ranges as the loaded ExportedProgram states them."""
    from torch.export.graph_signature import InputKind
    from torch.utils._sympy.numbers import int_oo

    def bound(v):
        return None if v in (int_oo, -int_oo) or abs(int(v)) >= _BIG else int(v)

    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    values = {**ep.state_dict, **ep.constants}

    def described(t):
        return (
            str(t.dtype).removeprefix("torch."),
            [int(s) if isinstance(s, int) else str(s) for s in t.shape],
        )

    ref = {"parameters": [], "buffers": [], "constants": [], "inputs": []}
    seen = set()
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            val = placeholders[spec.arg.name].meta.get("val")
            if isinstance(val, torch.Tensor):
                ref["inputs"].append((spec.arg.name, *described(val)))
            continue
        if spec.target in seen:
            continue
        seen.add(spec.target)
        value = values.get(spec.target)
        desc = described(value) if isinstance(value, torch.Tensor) else (None, None)
        if spec.kind == InputKind.PARAMETER:
            ref["parameters"].append((spec.target, *desc))
        elif spec.kind == InputKind.BUFFER:
            ref["buffers"].append((spec.target, *desc, bool(spec.persistent)))
        elif spec.kind in (InputKind.CONSTANT_TENSOR, InputKind.CUSTOM_OBJ):
            ref["constants"].append((spec.target, *desc))
    ref["ranges"] = {
        str(k): (bound(v.lower), bound(v.upper)) for k, v in ep.range_constraints.items()
    }
    return ref


def _reference_from_json(path) -> dict:
    """The same facts read straight from the archive's JSON with ``json`` and ``zipfile``."""
    with zipfile.ZipFile(path) as z:
        name = next(
            n
            for n in z.namelist()
            if n.endswith("serialized_exported_program.json")
            or (n.split("/")[-2:-1] == ["models"] and n.endswith(".json"))
        )
        doc = json.loads(z.read(name))
    graph = doc["graph_module"]["graph"]
    tvals = graph["tensor_values"]

    def one(union):  # {"tag": value} (or every tag present, all but one null)
        return next((k, v) for k, v in union.items() if v is not None)

    def size(s):
        tag, v = one(s)
        if tag == "as_int":
            return v
        # torch 2.15 writes a bare symbol as sympy's srepr:
        # Symbol('s77', positive=True, integer=True)
        symbol = re.fullmatch(r"Symbol\('(\w+)'(?:, \w+=\w+)*\)", v["expr_str"])
        return symbol.group(1) if symbol else v["expr_str"]

    def described(arg_name):
        meta = tvals.get(arg_name)
        if meta is None:
            return None, None
        return _SERDE_DTYPES[meta["dtype"]], [size(s) for s in meta["sizes"]]

    ref = {"parameters": [], "buffers": [], "constants": [], "inputs": []}
    seen = set()
    for spec in doc["graph_module"]["signature"]["input_specs"]:
        tag, body = one(spec)
        if tag == "user_input":
            atag, arg = one(body["arg"])
            if atag == "as_tensor":
                ref["inputs"].append((arg["name"], *described(arg["name"])))
            continue
        target = body.get(
            {
                "parameter": "parameter_name",
                "buffer": "buffer_name",
                "tensor_constant": "tensor_constant_name",
                "custom_obj": "custom_obj_name",
            }.get(tag, "")
        )
        if target is None or target in seen:
            continue
        seen.add(target)
        desc = described(body["arg"]["name"])
        if tag == "parameter":
            ref["parameters"].append((target, *desc))
        elif tag == "buffer":
            ref["buffers"].append((target, *desc, body.get("persistent", True) is not False))
        elif tag in ("tensor_constant", "custom_obj"):
            ref["constants"].append((target, *desc))

    def bound(v):
        return (
            None
            if v is None or isinstance(v, str) or not math.isfinite(v) or abs(v) >= _BIG
            else int(v)
        )

    # as torch's loader: a constraint on a symbol no size (of any graph) or sym int mentions
    # is dropped
    mentioned = []

    def collect(value):
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("sizes", "sym_int_values"):
                    mentioned.append(json.dumps(item))
                else:
                    collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    collect(doc["graph_module"]["graph"])
    text = " ".join(mentioned)
    ref["ranges"] = {
        k: (bound(r.get("min_val")), bound(r.get("max_val")))
        for k, r in (doc.get("range_constraints") or {}).items()
        if re.search(rf"\b{re.escape(k)}\b", text)
    }
    return ref


def _described(schema) -> dict:
    def shape(t):
        return [s if isinstance(s, int) else s.expr for s in t.shape]

    def weight(w):
        return (w.name, w.tensor.dtype if w.tensor else None, shape(w.tensor) if w.tensor else None)

    return {
        "parameters": [weight(w) for w in schema.parameters],
        "buffers": [(*weight(w), w.persistent is not False) for w in schema.buffers],
        "constants": [weight(w) for w in schema.constants],
        "inputs": [
            (v.graph_name, v.tensor.dtype, shape(v.tensor)) for v in schema.inputs if v.tensor
        ],
        "ranges": dict(schema.range_constraints),
    }


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_schema_agrees_with_torch(c):
    schema = pt2interp.read_schema(c.path)
    ep = _torch_program(str(c.path))
    if c.exported_by_installed_torch and (c.device == "cpu" or torch.cuda.is_available()):
        assert ep is not None, "torch must load what it wrote itself"
    if c.newer_than_installed_torch:
        # an older torch may misread a newer file (2.8 reads 2.10's symbols as
        # "Symbol('s77', ...)")
        ep = None
    want = _reference_from_torch(ep) if ep is not None else _reference_from_json(c.path)
    got = _described(schema)
    for key in ("parameters", "buffers", "constants", "inputs", "ranges"):
        assert got[key] == want[key], key
    # every symbolic dim carries the range the program declares for its symbol
    for v in schema.inputs:
        for dim in v.tensor.shape if v.tensor else ():
            if isinstance(dim, SymbolicDim) and dim.expr in want["ranges"]:
                assert (dim.min, dim.max) == want["ranges"][dim.expr]
    if ep is not None:
        _check_ops_against_torch(schema, ep)


def _check_ops_against_torch(schema, ep):
    """Every ATen op of the archive occurs as often in torch's graph (subgraphs included)."""
    seen = collections.Counter()
    for gm in ep.graph_module.modules():
        if isinstance(gm, torch.fx.GraphModule):
            for n in gm.graph.nodes:
                if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload):
                    seen["torch.ops." + str(n.target)] += 1
    ours = {k: v for k, v in schema.op_histogram.items() if k.startswith("torch.ops.aten.")}
    assert ours == {k: v for k, v in seen.items() if k.startswith("torch.ops.aten.")}


@pytest.mark.parametrize(
    "name", ["tiny_resnet", "mini_gpt", "mobile_block", "encoder", "lstm", "cond"]
)
def test_totals_and_module_tree_match_the_exporting_module(name):
    from fixtures import zoo

    module = zoo.ZOO[name].module()
    schema = pt2interp.read_schema(case("zoo", name).path)
    # module.parameters() yields a tied parameter once, as the totals count it
    assert schema.totals.parameter_count == sum(p.numel() for p in module.parameters())
    modules = dict(module.named_modules())
    for node in schema.module_tree.walk():
        assert node.fqn in modules, node.fqn
        if node.class_name:
            assert node.class_name == type(modules[node.fqn]).__name__, node.fqn
        owned = {
            n for n, _ in modules[node.fqn].named_parameters(recurse=False, remove_duplicate=False)
        }
        assert {p.rpartition(".")[2] for p in node.parameters} <= owned
    for pname, _ in module.named_parameters():
        assert any(pname in n.parameters for n in schema.module_tree.walk()), pname
    assert schema.module_tree.parameter_count == sum(
        p.numel() for _, p in module.named_parameters(remove_duplicate=False)
    )


def test_shapes_render_with_symbol_ranges():
    schema = pt2interp.read_schema(case("zoo", "dynamic_batch_mlp").path)
    (x,) = schema.inputs
    sym = schema.range_constraints and next(iter(schema.range_constraints))
    assert x.tensor.shape_str == f"[{sym}∈1..1024, 16]"
    assert schema.outputs[0].tensor.shape_str == f"[{sym}∈1..1024, 8]"
    assert x.tensor.numel is None and x.tensor.nbytes is None
    legacy = pt2interp.read_schema(case("torch-2.5.1", "dynamic_batch_mlp").path)
    assert legacy.inputs[0].tensor.shape_str == "[s0∈1..1024, 16]"


def test_call_structure_names_inputs_and_outputs():
    schema = pt2interp.read_schema(case("zoo", "multi_io").path)
    assert [(v.name, v.keyword) for v in schema.inputs] == [
        ("a", False),
        ("b", False),
        ("mask", False),
        ("scale", True),
    ]
    assert [v.name for v in schema.outputs] == ["out.sum", "out.pair.0", "out.pair.1", "out.cat"]
    assert [v.tensor.dtype for v in schema.outputs] == ["float32", "float32", "int64", "float32"]
    auto = pt2interp.read_schema(case("zoo", "autoencoder").path)
    assert [v.name for v in auto.outputs] == ["out.0", "out.1"]


def test_weights_tied_buffers_and_bytes():
    gpt = pt2interp.read_schema(case("zoo", "mini_gpt").path)
    assert gpt.totals.tied == [["tok_emb.weight", "head.weight"]]
    head = next(w for w in gpt.parameters if w.name == "head.weight")
    assert head.tied_to == "tok_emb.weight" and head.storage == next(
        w.storage for w in gpt.parameters if w.name == "tok_emb.weight"
    )
    resnet = pt2interp.read_schema(case("zoo", "tiny_resnet").path)
    sd = torch.load(case("zoo", "tiny_resnet").state_dict_path, weights_only=True)
    by_dtype = collections.Counter()
    for t in sd.values():
        by_dtype[str(t.dtype).removeprefix("torch.")] += t.numel() * t.element_size()
    assert resnet.totals.bytes_by_dtype == dict(by_dtype)
    assert all(b.persistent for b in resnet.buffers)
    assert {b.name for b in resnet.buffers} == {
        k for k in sd if "running" in k or "num_batches" in k
    }


def test_op_histogram_counts_subgraphs():
    schema = pt2interp.read_schema(case("zoo", "cond").path)
    assert schema.op_histogram["torch.ops.higher_order.cond"] == 1
    assert set(schema.subgraph_ops) == {"true_graph_0", "false_graph_0"}
    assert schema.subgraph_ops["false_graph_0"]["torch.ops.aten.cos.default"] == 1
    assert schema.op_histogram["torch.ops.aten.cos.default"] == 1


def test_to_dict_is_plain_json():
    schema = pt2interp.read_schema(case("zoo", "dynamic_batch_mlp").path)
    d = schema.to_dict()
    assert json.loads(schema.to_json()) == d
    assert d["schema_version"] == ".".join(map(str, schema.schema_version))
    assert (
        d["torch_version"] == case("zoo", "dynamic_batch_mlp").torch_version
        and d["layout"] == "pt2"
    )
    dim = d["inputs"][0]["tensor"]["shape"][0]
    assert dim["min"] == 1 and dim["max"] == 1024 and d["inputs"][0]["tensor"]["shape"][1] == 16
    assert d["parameters"][0]["tensor"]["nbytes"] == 32 * 16 * 4
    assert d["module_tree"]["children"][0]["fqn"] == "fc1"
    assert d["op_histogram"]["torch.ops.aten.linear.default"] == 2


def test_missing_ops_checked_only_when_torch_is_there(tmp_path):
    path = case("zoo", "mlp").path
    assert pt2interp.read_schema(path).missing_ops == []  # torch is imported in this process
    assert pt2interp.read_schema(path, check_ops=False).missing_ops is None
    member = member_named(path, "models/model.json")
    with zipfile.ZipFile(path) as z:
        text = z.read(member).decode()
    doctored = rewrite_zip(
        path,
        tmp_path / "mlp.pt2",
        replace={
            member: text.replace(
                "torch.ops.aten.relu.default", "torch.ops.aten.no_such_op.default"
            ).encode()
        },
    )
    assert pt2interp.read_schema(doctored).missing_ops == ["torch.ops.aten.no_such_op.default"]


@pytest.mark.parametrize(
    "folder,name", [("zoo", "tiny_resnet"), ("torch-2.5.1", "tiny_resnet"), ("zoo", "mini_gpt")]
)
def test_no_weight_bytes_are_read(monkeypatch, folder, name):
    touched = record_member_reads(monkeypatch)
    pt2interp.read_schema(case(folder, name).path)
    weights = weight_members(touched)
    assert weights == [], f"read_schema read weight members {weights}"
    assert touched, "the monkeypatch saw nothing: the test is broken"


def test_torch_is_never_imported():
    paths = [
        str(case("zoo", "mini_gpt").path),
        str(case("zoo", "cond", "core").path),
        str(case("torch-2.5.1", "mini_gpt").path),
        str(case("torch-2.5.1", "bf16_mlp").path),
    ]
    code = (
        "import sys, json, io, contextlib, pt2interp\n"
        "from pt2interp.cli import main\n"
        f"for p in {paths!r}:\n"
        "    s = pt2interp.read_schema(p)\n"
        "    assert s.parameters and s.missing_ops is None\n"
        "    json.loads(s.to_json())\n"
        "    w = pt2interp.extract_weights(p, backend='numpy')\n"
        "    assert len(w) >= len(s.parameters)\n"
        "    for argv in (['info', p], ['info', '--json', p]):\n"
        "        with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "            assert main(argv) == 0\n"
        "        assert out.getvalue()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_info_prints_tables_and_json(capsys):
    from pt2interp.cli import main

    assert main(["info", str(case("zoo", "dynamic_batch_mlp").path)]) == 0
    text = capsys.readouterr().out
    for expected in (
        "Inputs and outputs",
        "∈1..1024, 16]",
        "fc1",
        "Linear",
        "aten.linear.default",
        "Module tree",
        "ops this torch lacks: none",
    ):
        assert expected in text
    assert main(["info", "--json", str(case("zoo", "mini_gpt").path)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["totals"]["tied"] == [["tok_emb.weight", "head.weight"]]
