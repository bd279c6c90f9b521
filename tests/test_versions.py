"""Schema-version differences: each normalizer in pt2interp.versions rewrites what older
releases wrote into what the newest writes, and the parser reads only the newest form.

The cross-version checks compare the same model written by two releases: torch 2.6 records no
input kinds and no ``is_hop_single_tensor_return``, torch 2.7 records both, and the normalized
2.6 file must read as 2.7's does.
"""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import pytest

from pt2interp import schema, versions
from pt2interp.errors import SchemaError
from pt2interp.kinds import PassedAs
from tests.helpers import program_member

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MODELS_WITH_HOPS = ["cond", "cond_core"]


def _doc(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read(program_member(path)))


def _parse(doc: dict) -> schema.ExportedProgramModel:
    return schema.parse_exported_program(doc, "model.json")


def _hop_nodes(graph: schema.Graph):
    return [n for n in graph.iter_nodes() if n.target.startswith("torch.ops.higher_order.")]


def test_every_normalizer_is_named_and_says_why():
    names = [n.name for n in versions.NORMALIZERS]
    assert len(names) == len(set(names))
    for n in versions.NORMALIZERS:
        assert n.why and sum(f is not None for f in (n.document, n.node, n.union)) == 1, n.name
        # a walking normalizer must say when it stops applying, or every file pays the walk
        assert n.document is not None or n.before is not None, n.name


@pytest.mark.parametrize("release", ["torch-2.8.0", "torch-2.10.0", "torch-2.15.0"])
def test_files_of_newer_releases_are_not_walked(release, monkeypatch):
    def walked(*args):
        raise AssertionError("a file of a newer release was walked")

    monkeypatch.setattr(versions, "_walk", walked)
    paths = sorted((FIXTURES / release).glob("*.pt2"))
    assert paths
    for path in paths:
        _parse(_doc(path))


@pytest.mark.parametrize("model", MODELS_WITH_HOPS)
def test_unrecorded_input_kinds_and_returns_read_as_recorded_ones(model):
    old_doc = _doc(FIXTURES / "torch-2.6.0" / f"{model}.pt2")
    new_doc = _doc(FIXTURES / "torch-2.7.1" / f"{model}.pt2")
    assert schema.schema_version_of(old_doc, "m") < (8, 7) <= schema.schema_version_of(new_doc, "m")
    old, new = _hop_nodes(_parse(old_doc).graph), _hop_nodes(_parse(new_doc).graph)
    assert old and [n.target for n in old] == [n.target for n in new]
    for a, b in zip(old, new, strict=True):
        assert a.hop_returns_one_tensor == b.hop_returns_one_tensor
        named = [(x.name, x.kind) for x in a.inputs if x.name]
        assert named == [(x.name, x.kind) for x in b.inputs if x.name], a.target


def test_unrecorded_input_kinds_come_from_the_target():
    doc = _doc(FIXTURES / "torch-2.6.0" / "cond.pt2")
    model = _parse(doc)
    hop = _hop_nodes(model.graph)[0]
    assert {x.kind for x in hop.inputs if x.name} <= {PassedAs.KEYWORD}
    aten = next(n for n in model.graph.nodes if n.target.startswith("torch.ops.aten."))
    assert {x.kind for x in aten.inputs} == {None}  # the op's schema decides, not the file


def test_out_dtype_returns_one_tensor_before_it_was_recorded():
    node = {"target": "torch.ops.higher_order.out_dtype", "inputs": [], "outputs": []}
    doc = {"graph_module": {"graph": {"inputs": [], "nodes": [node]}}}
    versions.normalize(doc, (8, 6))
    assert node["is_hop_single_tensor_return"] is True
    node = {"target": "torch.ops.higher_order.cond", "inputs": [], "outputs": []}
    versions.normalize({"graph_module": {"graph": {"inputs": [], "nodes": [node]}}}, (8, 6))
    assert node["is_hop_single_tensor_return"] is False


def _with_schema(doc: dict, version: tuple[int, int]) -> dict:
    doc = copy.deepcopy(doc)
    doc["schema_version"] = {"major": version[0], "minor": version[1]}
    return doc


def test_bare_optional_tensor_names_before_5_3():
    path = FIXTURES / "torch-2.3.1"
    bare = [
        p for p in sorted(path.glob("*.pt2")) if '"as_tensor": "' in json.dumps(_doc(p))
    ]  # torch 2.3 wrote some; the parser accepts only {"name": ...}
    assert bare
    for p in bare:
        doc = _doc(p)
        versions.normalize(doc, schema.schema_version_of(doc, "m"))
        assert '"as_tensor": "' not in json.dumps(doc)
        _parse(_doc(p))


def _first_graph_input_renamed(doc: dict, tag: str) -> dict:
    graph_inputs = doc["graph_module"]["graph"]["inputs"]
    ((old_tag, value),) = graph_inputs[0].items()
    assert old_tag == "as_tensor"
    graph_inputs[0] = {tag: value}
    return doc


def test_effect_tokens_of_torch_2_4_and_2_5_read_as_tensors():
    doc = _doc(FIXTURES / "torch-2.5.1" / "mlp.pt2")
    want = _parse(copy.deepcopy(doc))
    got = _parse(_first_graph_input_renamed(doc, "as_token"))
    assert got.graph.inputs == want.graph.inputs


def test_effect_token_spelling_is_refused_in_newer_files():
    doc = _first_graph_input_renamed(_doc(FIXTURES / "torch-2.10.0" / "mlp.pt2"), "as_token")
    with pytest.raises(SchemaError, match=r"graph\.inputs\[0\].*unknown argument kind 'as_token'"):
        _parse(doc)


def test_dialect_placeholder_version_and_unbounded_ranges():
    doc = _with_schema(_doc(FIXTURES / "torch-2.5.1" / "dynamic_batch_mlp.pt2"), (5, 3))
    doc.pop("verifiers", None)
    doc["dialect"] = "ATEN"
    doc["torch_version"] = "<=2.4"
    (symbol,) = doc["range_constraints"]
    doc["range_constraints"][symbol] = {"min_val": 2, "max_val": "Infinity"}
    model = _parse(doc)
    assert model.verifiers == ["ATEN"] and model.torch_version is None
    assert model.range_constraints[symbol] == schema.RangeConstraint(2, None)
    for spelled in (float("inf"), 2**63, -(2**63), None):
        doc["range_constraints"][symbol] = {"min_val": 0, "max_val": spelled}
        assert _parse(doc).range_constraints[symbol].max_val is None


def test_a_malformed_document_is_left_to_the_parser():
    doc = {
        "schema_version": {"major": 5, "minor": 1},
        "graph_module": {
            "graph": {"inputs": [], "outputs": [], "nodes": [{"target": 3, "inputs": [7]}]}
        },
    }
    versions.normalize(doc, (5, 1))  # no exception here: the parser names the problem
    with pytest.raises(SchemaError, match="target"):
        _parse(doc)
