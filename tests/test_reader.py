"""Issue: read every .pt2 archive — layouts, schema versions, weights, errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import CASES
from fixture_cases import FIXTURES, case, release
from helpers import assert_bitwise_equal, member_named, rewrite_zip

import pt2interp


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_every_fixture_reads(c):
    prog = pt2interp.read_program(c.path)
    assert prog.layout in ("pt2", "legacy")
    assert prog.schema_version[0] >= 5
    assert prog.graph.nodes, "a model with no nodes"
    assert prog.torch_version is None or release(prog.torch_version) == release(c.torch_version)


def _archive_state_dict(c):
    """What a legacy archive itself stores (torch's own pickle), or None for the new layout."""
    with zipfile.ZipFile(c.path) as z:
        names = [n for n in z.namelist() if n.endswith("serialized_state_dict.pt")]
        if not names:
            return None
        data = z.read(names[0])
    return torch.load(io.BytesIO(data), weights_only=True)


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_state_dict_equals_exporting_module(c):
    got = pt2interp.read_program(c.path).state_dict()
    module_sd = torch.load(c.state_dict_path, weights_only=True) if c.state_dict_path else None
    # every name of the exporting module, tied names included (torch 2.5 to 2.7 lift one name of
    # a tied pair into the graph; the other comes from the pickled state dict)
    if module_sd is not None:
        assert set(got) == set(
            module_sd
        )  # the module interleaves params and buffers; archives list params first
        for name in got:
            assert_bitwise_equal(got[name], module_sd[name], name)
    stored = _archive_state_dict(c)  # torch's own reading of a legacy archive's pickle
    want = stored if stored is not None else module_sd
    if want is None:
        assert c.device != "cpu", f"{c.id}: no reference state dict"
        pytest.skip(f"{c.id}: the CUDA fixtures ship no state dict to compare with")
    assert set(got) == set(want)
    for name, w in want.items():
        assert_bitwise_equal(got[name], w.detach(), name)
    # tied weights: names sharing storage in the reference share it here too
    by_storage: dict = {}
    for name, w in want.items():
        by_storage.setdefault((w.untyped_storage().data_ptr(), w.dtype), []).append(name)
    for names in (n for n in by_storage.values() if len(n) > 1):
        ptrs = {got[n].untyped_storage().data_ptr() for n in names}
        assert len(ptrs) == 1, f"tied weights {names} do not share storage"


@pytest.mark.parametrize(
    "c",
    [c for c in CASES if c.name == "mini_gpt" and c.folder in ("torch-2.5.1", "torch-2.7.1")],
    ids=lambda c: c.id,
)
def test_legacy_tied_names_come_back_sharing_storage(c, tmp_path):
    """torch 2.5 to 2.7 lift one name of a tied pair into the graph; the pickled state dict has
    both."""
    stored = _archive_state_dict(c)
    assert {"wte.weight", "lm_head.weight"} <= set(stored)
    program = pt2interp.read_program(c.path)
    sd = program.state_dict()
    assert set(sd) == set(stored) and program.aliases() == {"wte.weight": "lm_head.weight"}
    assert (
        sd["wte.weight"].untyped_storage().data_ptr()
        == sd["lm_head.weight"].untyped_storage().data_ptr()
    )
    for backend in ("torch", "numpy"):
        assert set(pt2interp.extract_weights(c.path, backend=backend)) == set(stored), backend
    out = tmp_path / "w.safetensors"
    subprocess.run(
        [sys.executable, "-m", "pt2interp.cli", "weights", str(c.path), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    from safetensors import safe_open

    from pt2interp.extract import load_safetensors

    with safe_open(str(out), framework="pt") as f:
        written, metadata = set(f.keys()), f.metadata()
    assert written == set(stored) - {"wte.weight"}  # written once, the other name an alias
    assert json.loads(metadata["pt2interp.aliases"]) == {"wte.weight": "lm_head.weight"}
    back = load_safetensors(out)
    assert (
        set(back) == set(stored)
        and back["wte.weight"].data_ptr() == back["lm_head.weight"].data_ptr()
    )


def test_tied_weights_fixture_really_is_tied():
    sd = pt2interp.read_program(case("zoo", "mini_gpt").path).state_dict()
    assert (
        sd["head.weight"].untyped_storage().data_ptr()
        == sd["tok_emb.weight"].untyped_storage().data_ptr()
    )


def test_reading_a_program_does_not_import_torch():
    paths = [
        str(case("zoo", "mlp").path),
        str(case("torch-2.5.1", "cond").path),
        str(case("zoo", "cond", "core").path),
    ]
    code = (
        "import sys, pt2interp\n"
        f"for p in {paths!r}:\n"
        "    prog = pt2interp.read_program(p)\n"
        "    assert prog.graph.nodes\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_metadata_is_recorded():
    prog = pt2interp.read_program(case("zoo", "mlp").path)
    assert prog.layout == "pt2" and prog.torch_version == case("zoo", "mlp").torch_version
    assert prog.schema_version >= (8, 0)
    legacy = pt2interp.read_program(case("torch-2.5.1", "mlp").path)
    assert (
        legacy.layout == "legacy"
        and legacy.schema_version == (7, 3)
        and legacy.torch_version.startswith("2.5.1")
    )
    node = next(n for n in prog.graph.nodes if "linear" in n.target)
    assert node.stack_trace and node.nn_module_stack[-1].type_name.endswith("Linear")


def test_dynamic_dims_and_ranges():
    prog = pt2interp.read_program(case("zoo", "dynamic_batch_mlp").path)
    x = prog.graph.tensor_values[prog.signature.inputs_of("user_input")[0].arg.value.name]
    sym = x.sizes[0].expr.as_symbol()
    assert sym is not None
    rc = prog.model.range_constraints[sym]
    assert (rc.min_val, rc.max_val) == (1, 1024)


def test_open_archive_accepts_paths_file_objects_and_bytes():
    p = case("zoo", "mlp").path
    with open(p, "rb") as fileobj:
        for src in (p, str(p), fileobj, p.read_bytes()):
            arc = pt2interp.open_archive(src)
            assert arc.layout == "pt2" and arc.model_names == ["model"]
            prog = pt2interp.read_program(arc)
            assert prog.state_dict()


def test_multi_model_archive_lists_and_loads_by_name(tmp_path):
    package = pytest.importorskip(
        "torch.export.pt2_archive._package",
        reason=f"torch {torch.__version__} cannot write multi-model archives",
    )
    package_pt2 = package.package_pt2

    class A(torch.nn.Module):
        def forward(self, x):
            return x + 1

    class B(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x)

    x = torch.randn(2, 3)
    eps = {"adder": torch.export.export(A(), (x,)), "linear": torch.export.export(B(), (x,))}
    path = tmp_path / "two.pt2"
    package_pt2(str(path), exported_programs=eps)
    arc = pt2interp.open_archive(path)
    assert sorted(arc.model_names) == ["adder", "linear"]
    with pytest.raises(pt2interp.SchemaError, match="several models"):
        pt2interp.read_program(path)
    with pytest.raises(pt2interp.SchemaError, match="no model named 'nope'"):
        pt2interp.read_program(path, model="nope")
    lin = pt2interp.read_program(path, model="linear")
    assert set(lin.state_dict()) == {"lin.weight", "lin.bias"}
    torch.testing.assert_close(
        pt2interp.load(path, model="linear")(x), eps["linear"].module()(x), rtol=0, atol=0
    )
    torch.testing.assert_close(pt2interp.load(path, model="adder")(x), x + 1)


def test_torch_2_8_pickled_weights_layout(tmp_path):
    """torch 2.8 wrote weights as one pickled data/weights/model.pt; rebuild that layout."""
    src = case("zoo", "small_cnn").path
    ref = pt2interp.read_program(src)
    buf = io.BytesIO()
    torch.save({k: v.clone() for k, v in ref.state_dict().items()}, buf)
    with zipfile.ZipFile(src) as z:
        top = z.namelist()[0].split("/")[0]
        drop = {n: None for n in z.namelist() if n.startswith(f"{top}/data/weights/")}
    path = rewrite_zip(
        src,
        tmp_path / "v28.pt2",
        replace=drop,
        add={f"{top}/data/weights/model.pt": buf.getvalue()},
    )
    got = pt2interp.read_program(path).state_dict()
    for k, v in ref.state_dict().items():
        assert_bitwise_equal(got[k], v, k)


def test_aotinductor_package_is_refused_with_advice(tmp_path):
    path = tmp_path / "compiled.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("compiled/archive_format", "pt2")
        z.writestr("compiled/data/aotinductor/model/model.so", b"\x7fELF")
        z.writestr("compiled/data/aotinductor/model/model.wrapper.cpp", "// code")
    with pytest.raises(pt2interp.AOTInductorPackageError, match="AOTInductor") as e:
        pt2interp.read_program(path)
    assert "aoti_load_package" in str(e.value)


# -- broken archives: each gets the project's error, naming the culprit ------------------------


def test_not_a_zip(tmp_path):
    p = tmp_path / "x.pt2"
    p.write_bytes(b"hello, this is not a zip file at all" * 10)
    with pytest.raises(pt2interp.FormatError, match="not a readable zip"):
        pt2interp.read_program(p)


def test_truncated_zip(tmp_path):
    src = case("zoo", "mlp").path
    p = tmp_path / "t.pt2"
    p.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(pt2interp.FormatError, match=str(p.name)):
        pt2interp.read_program(p).state_dict()


def test_missing_member(tmp_path):
    src = case("zoo", "mlp").path
    p = rewrite_zip(src, tmp_path / "m.pt2", replace={member_named(src, "weight_0"): None})
    with pytest.raises(pt2interp.FormatError, match="missing member .*weight_0"):
        pt2interp.read_program(p).state_dict()


def test_missing_program_json(tmp_path):
    src = case("torch-2.5.1", "mlp").path
    p = rewrite_zip(src, tmp_path / "m.pt2", replace={"serialized_exported_program.json": None})
    with pytest.raises(pt2interp.FormatError, match="no exported program found"):
        pt2interp.read_program(p)


def _edit_program_json(src, dst, edit):
    name = (
        member_named(src, "models/model.json")
        if "zoo" in str(src)
        else member_named(src, "serialized_exported_program.json")
    )
    with zipfile.ZipFile(src) as z:
        doc = json.loads(z.read(name))
    edit(doc)
    return rewrite_zip(src, dst, replace={name: json.dumps(doc).encode()})


def test_json_with_a_wrong_type_names_the_path(tmp_path):
    p = _edit_program_json(
        case("zoo", "mlp").path,
        tmp_path / "w.pt2",
        lambda d: d["graph_module"]["graph"]["nodes"][1].__setitem__("inputs", "oops"),
    )
    with pytest.raises(
        pt2interp.SchemaError, match=r"graph_module\.graph\.nodes\[1\]\.inputs: expected a list"
    ):
        pt2interp.read_program(p)


def test_wrong_dtype_number_names_the_field(tmp_path):
    def edit(d):
        first = next(iter(d["graph_module"]["graph"]["tensor_values"]))
        d["graph_module"]["graph"]["tensor_values"][first]["dtype"] = 99

    p = _edit_program_json(case("zoo", "mlp").path, tmp_path / "d.pt2", edit)
    with pytest.raises(
        pt2interp.SchemaError, match=r"tensor_values\..*\.dtype: unknown ScalarType 99"
    ):
        pt2interp.read_program(p)


def test_invalid_json(tmp_path):
    src = case("zoo", "mlp").path
    p = rewrite_zip(
        src, tmp_path / "j.pt2", replace={member_named(src, "models/model.json"): b"{not json"}
    )
    with pytest.raises(pt2interp.SchemaError, match="invalid JSON"):
        pt2interp.read_program(p)


def test_unknown_schema_major(tmp_path):
    p = _edit_program_json(
        case("zoo", "mlp").path,
        tmp_path / "v.pt2",
        lambda d: d.__setitem__("schema_version", {"major": 42, "minor": 0}),
    )
    with pytest.raises(pt2interp.SchemaError, match="unknown schema major 42"):
        pt2interp.read_program(p)


def test_weight_file_too_short(tmp_path):
    src = case("zoo", "mlp").path
    name = member_named(src, "weight_0")
    with zipfile.ZipFile(src) as z:
        data = z.read(name)
    p = rewrite_zip(src, tmp_path / "s.pt2", replace={name: data[: len(data) // 2]})
    with pytest.raises(
        pt2interp.WeightError, match=r"weight_0 .*needing \d+ bytes, but the record holds only"
    ):
        pt2interp.read_program(p).state_dict()


def test_unknown_argument_kind_names_the_node(tmp_path):
    def edit(d):
        d["graph_module"]["graph"]["nodes"][0]["inputs"][0]["arg"] = {"as_mystery": 1}

    p = _edit_program_json(case("zoo", "mlp").path, tmp_path / "a.pt2", edit)
    with pytest.raises(
        pt2interp.SchemaError,
        match=r"nodes\[0\]\.inputs\[0\]\.arg: unknown argument kind 'as_mystery'",
    ):
        pt2interp.read_program(p)


def test_errors_share_one_hierarchy():
    for cls in (
        pt2interp.FormatError,
        pt2interp.SchemaError,
        pt2interp.WeightError,
        pt2interp.UnsupportedOpError,
        pt2interp.InputMismatchError,
        pt2interp.GraphError,
    ):
        assert issubclass(cls, pt2interp.Pt2Error)


def test_fixture_folder_is_where_tests_expect():
    assert (FIXTURES / "zoo" / "manifest.json").exists()
