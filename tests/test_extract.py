"""Issue: weight extraction — torch and numpy backends, safetensors, load_weights into
handwritten modules."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CASES
from fixture_cases import FIXTURES, case, eager_runs_or_skip, flatten_outputs
from helpers import assert_bitwise_equal, member_named, rewrite_zip
from torch import nn

import pt2interp
from pt2interp.errors import WeightError
from pt2interp.extract import LoadWeightsError, load_safetensors, save_safetensors

sys.path.insert(0, str(FIXTURES.parent))  # fixtures.zoo / fixtures.make_fixtures

ZOO_TRAINING = [c for c in CASES if c.folder == "zoo" and c.ir == "training"]


def _as_torch(weights, name) -> torch.Tensor:
    """A numpy-backend entry as a torch tensor of the dtype it names (raw bits reinterpreted)."""
    return pt2interp.numpy_to_torch(weights[name], weights.dtypes[name])


def _stored_state_dict(c) -> dict | None:
    """What torch itself reads from a pickled layout's state dict member (None for raw records)."""
    with zipfile.ZipFile(c.path) as z:
        names = [
            n
            for n in z.namelist()
            if n.endswith(("serialized_state_dict.pt", "data/weights/model.pt"))
        ]
        if not names:
            return None
        return torch.load(io.BytesIO(z.read(names[0])), weights_only=True)


def _shared_groups(tensors: dict) -> list[list[str]]:
    groups: dict = {}
    for name, t in tensors.items():
        groups.setdefault((t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype), []).append(
            name
        )
    return [g for g in groups.values() if len(g) > 1]


# ----------------------------------------------------------------------------------------------
# extract_weights
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_extracted_weights_equal_module_state_dict(c):
    got = pt2interp.extract_weights(c.path)
    arrays = pt2interp.extract_weights(c.path, backend="numpy")
    assert list(arrays) == list(got), "the two backends disagree on names or order"
    module_sd = torch.load(c.state_dict_path, weights_only=True) if c.state_dict_path else None
    stored = _stored_state_dict(c)
    if module_sd is not None:  # every name, tied ones included, from every layout
        assert set(got) == set(module_sd)
    if stored is not None:
        assert set(got) == set(stored)
    references = [r for r in (module_sd, stored) if r is not None]
    # the CUDA fixtures ship no state dict: for them the two backends are checked against each other
    assert references or c.device != "cpu", f"{c.id}: no reference state dict"
    for name, t in got.items():
        for ref in references:
            assert_bitwise_equal(t, ref[name].detach(), name)
        a = arrays[name]
        assert arrays.dtypes[name] == str(t.dtype).removeprefix("torch.")
        assert a.shape == tuple(t.shape) and a.strides == tuple(
            s * a.itemsize for s in t.stride()
        ), name
        assert_bitwise_equal(
            _as_torch(arrays, name), t.clone(memory_format=torch.contiguous_format), name
        )
    # tied weights stay tied in both backends
    for group in _shared_groups(references[0] if references else got):
        present = [n for n in group if n in got]
        assert len({got[n].untyped_storage().data_ptr() for n in present}) <= 1, present
        assert all(np.shares_memory(arrays[present[0]], arrays[n]) for n in present), present


def test_numpy_backend_names_dtypes_numpy_lacks():
    c = case("zoo", "bf16_mlp")
    arrays = pt2interp.extract_weights(c.path, backend="numpy")
    want = torch.load(c.state_dict_path, weights_only=True)
    from pt2interp.numpy_weights import RAW_BITS_DTYPES

    for name, t in want.items():
        assert arrays.dtypes[name] == "bfloat16"
        if "bfloat16" in RAW_BITS_DTYPES:  # no ml_dtypes: raw bits
            assert arrays[name].dtype == np.uint16 and name in arrays.raw_bits
            assert np.array_equal(arrays[name], t.view(torch.int16).numpy().view(np.uint16))
        else:
            assert arrays[name].dtype.name == "bfloat16" and not arrays.raw_bits


# Every way numpy-backend weights reach torch, for archives of every layout with dtypes numpy
# lacks; run in this process (ml_dtypes installed, as the test extras do) and in a child
# process where ml_dtypes cannot be imported (raw bits).
_NUMPY_TO_TORCH = r"""
import sys, tempfile, pathlib
if sys.argv[1] == "without":
    sys.modules["ml_dtypes"] = None  # import ml_dtypes now raises ImportError
sys.path[:0] = sys.argv[2:3]
import torch
import pt2interp
from pt2interp.extract import load_safetensors, save_safetensors
from pt2interp.numpy_weights import RAW_BITS_DTYPES
from fixture_cases import case

assert ("bfloat16" in RAW_BITS_DTYPES) == (sys.argv[1] == "without"), sorted(RAW_BITS_DTYPES)
for folder in sys.argv[3:]:
    c = case(folder, "bf16_mlp")
    want = pt2interp.extract_weights(c.path)
    arrays = pt2interp.extract_weights(c.path, backend="numpy")
    assert {str(t.dtype) for t in want.values()} == {"torch.bfloat16"}, c.id
    for got in (
        arrays.to_torch(),
        {k: pt2interp.numpy_to_torch(a, arrays.dtypes[k]) for k, a in arrays.items()},
    ):
        assert list(got) == list(want), c.id
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), (c.id, k)
    module = torch.nn.Module()  # a handwritten module of the same names, zero-filled
    for name, t in want.items():
        *path, leaf = name.split(".")
        owner = module
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        owner.register_parameter(leaf, torch.nn.Parameter(torch.zeros_like(t)))
    report = pt2interp.load_weights(module, arrays)
    assert report.applied and not report.missing, (c.id, report)
    for k, t in module.state_dict().items():
        assert torch.equal(t, want[k]), (c.id, k)
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "w.safetensors"
        save_safetensors(c.path, out)  # through the numpy backend
        back = load_safetensors(out)
        assert all(torch.equal(back[k], want[k]) for k in want), c.id
print("ok")
"""


@pytest.mark.parametrize("ml_dtypes", ["with", "without"])
def test_numpy_weights_load_into_torch_with_and_without_ml_dtypes(ml_dtypes):
    if ml_dtypes == "with":
        pytest.importorskip(
            "ml_dtypes", reason="ml_dtypes is in the test extras; without it only the fallback runs"
        )
    folders = sorted({c.folder for c in CASES if c.name == "bf16_mlp"})
    assert {"zoo", "torch-2.5.1", "torch-2.8.0", "torch-2.10.0"} <= set(
        folders
    )  # all three layouts
    tests_dir = str(FIXTURES.parent / "tests")
    done = subprocess.run(
        [sys.executable, "-c", _NUMPY_TO_TORCH, ml_dtypes, tests_dir, *folders],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_numpy_to_torch_takes_every_container_of_bits():
    values = torch.tensor([1.0, -2.5, 0.0, 65504.0])
    for dtype in (torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2):
        t = values.to(dtype)
        bits = t.view({1: torch.uint8, 2: torch.int16}[t.element_size()]).numpy()
        unsigned = bits.view({1: np.uint8, 2: np.uint16}[bits.itemsize])
        for raw in (bits, unsigned):
            got = pt2interp.numpy_to_torch(raw, str(dtype).removeprefix("torch."))
            assert got.dtype == dtype and torch.equal(got.view(torch.uint8), t.view(torch.uint8)), (
                dtype
            )
    # a strided read-only view comes back as a writable copy of the same values
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = np.lib.stride_tricks.as_strided(base, shape=(4, 3), strides=(4, 16), writeable=False)
    got = pt2interp.numpy_to_torch(view)
    assert torch.equal(got, torch.from_numpy(base.T.copy())) and got.dtype == torch.float32
    got.add_(1)  # writable, and not the file's memory
    assert base[0, 0] == 0
    with pytest.raises(WeightError, match="cannot hold bfloat16"):
        pt2interp.numpy_to_torch(np.zeros(3, dtype=np.float32), "bfloat16")
    with pytest.raises(WeightError, match="does not exist"):
        pt2interp.numpy_to_torch(np.zeros(3, dtype=np.float32), "no_such_dtype")


def test_buffers_and_constants_are_chosen_by_flags():
    path = case("zoo", "tiny_resnet").path
    everything = pt2interp.extract_weights(path, backend="numpy")
    params = pt2interp.extract_weights(path, backend="numpy", include_buffers=False)
    assert set(params) == set(everything) - {
        k for k, v in everything.kinds.items() if v == "buffer"
    }
    assert set(params.kinds.values()) == {"parameter"}
    assert any(k.endswith("running_mean") for k in everything)
    torch_params = pt2interp.extract_weights(path, include_buffers=False)
    assert list(torch_params) == list(params)


def test_views_past_the_end_of_a_record_are_refused(tmp_path):
    src = case("zoo", "mlp").path
    member = member_named(src, "model_weights_config.json")
    with zipfile.ZipFile(src) as z:
        config = json.loads(z.read(member))
    config["config"]["fc1.weight"]["tensor_meta"]["sizes"][0] = {"as_int": 64}
    bad = rewrite_zip(src, tmp_path / "mlp.pt2", replace={member: json.dumps(config).encode()})
    with pytest.raises(WeightError, match=r"fc1\.weight.*needing 4096 bytes.*only 2048"):
        pt2interp.extract_weights(bad, backend="numpy")


def test_legacy_pickles_refuse_anything_but_tensors(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
        z.writestr("archive/byteorder", "little")
    src = case("torch-2.5.1", "mlp").path
    bad = rewrite_zip(
        src, tmp_path / "mlp.pt2", replace={"serialized_state_dict.pt": payload.getvalue()}
    )
    with pytest.raises(WeightError, match="serialized_state_dict.pt"):
        pt2interp.extract_weights(bad, backend="numpy")


# ----------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_safetensors_holds_every_weight(c, tmp_path):
    out = tmp_path / "w.safetensors"
    saved = save_safetensors(c.path, out)
    want = pt2interp.extract_weights(c.path)
    got = load_safetensors(out)
    assert set(got) == set(want) and set(saved.tensors) | set(saved.aliases) == set(want)
    for name, t in want.items():
        assert_bitwise_equal(got[name], t.clone(memory_format=torch.contiguous_format), name)
    meta, program = saved.metadata, pt2interp.read_program(c.path)
    assert meta["source"] == c.path.name and meta["layout"] == program.layout
    assert meta["schema_version"] == ".".join(map(str, program.schema_version))


@pytest.mark.parametrize("c", ZOO_TRAINING, ids=lambda c: c.id)
def test_safetensors_round_trips_into_the_original_module(c, tmp_path):
    from fixtures import zoo

    out = tmp_path / f"{c.name}.safetensors"
    save_safetensors(c.path, out)
    module = zoo.ZOO[c.name].module()
    with torch.no_grad():  # start from different values, so that loading must do the work
        for p in module.parameters():
            p.add_(1.0)
    report = pt2interp.load_weights(module, out, strict=True)
    assert report.ok and report.applied
    want = torch.load(c.state_dict_path, weights_only=True)
    got = module.state_dict()
    assert set(got) == set(want)
    for name, t in want.items():
        assert_bitwise_equal(got[name].contiguous(), t.contiguous(), name)
    eager_runs_or_skip(c)
    _assert_outputs_match(c, module)


def _assert_outputs_match(c, module):
    args, kwargs = c.inputs()
    with torch.no_grad():
        outputs = flatten_outputs(module(*args, **kwargs))
    for key, want in c.expected().items():
        got = outputs[key]
        tol = 1e-2 if c.low_precision else 1e-5
        torch.testing.assert_close(got.to(want.dtype), want, rtol=tol, atol=tol, msg=key)


def test_tied_weights_are_written_once_the_way_safetensors_expects(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_model

    from fixtures import zoo

    out = tmp_path / "gpt.safetensors"
    saved = save_safetensors(case("zoo", "mini_gpt").path, out)
    assert saved.aliases == {"tok_emb.weight": "head.weight"}
    with safe_open(str(out), framework="pt") as f:
        names = set(f.keys())
        assert "tok_emb.weight" not in names and "head.weight" in names
        meta = f.metadata()
    assert (
        meta["torch_version"] == case("zoo", "mini_gpt").torch_version
        and meta["source"] == "mini_gpt.pt2"
    )
    assert json.loads(meta["pt2interp.aliases"]) == saved.aliases
    restored = load_safetensors(out)
    assert restored["tok_emb.weight"].data_ptr() == restored["head.weight"].data_ptr()
    module = zoo.ZOO["mini_gpt"].module()
    load_model(module, str(out), strict=True)  # safetensors' own loader takes the file as well
    assert module.head.weight is module.tok_emb.weight
    _assert_outputs_match(case("zoo", "mini_gpt"), module)


def test_cli_weights_writes_safetensors_and_npz_without_torch(tmp_path):
    path = case("torch-2.5.1", "bf16_mlp").path
    st, npz = tmp_path / "w.safetensors", tmp_path / "w.npz"
    code = (
        "import sys\nfrom pt2interp.cli import main\n"
        f"assert main(['weights', {str(path)!r}, '-o', {str(st)!r}, "
        f"'--numpy', {str(npz)!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    want = pt2interp.extract_weights(path)
    got = load_safetensors(st)
    for name, t in want.items():
        assert_bitwise_equal(got[name], t.contiguous(), name)
    with np.load(npz) as z:
        dtypes = json.loads(str(z["__torch_dtypes__"]))
        assert dtypes == {k: "bfloat16" for k in want}
        assert set(z.files) == set(want) | {"__torch_dtypes__"}


# ----------------------------------------------------------------------------------------------
# load_weights into handwritten modules
# ----------------------------------------------------------------------------------------------


class Block(nn.Module):
    """A ResNet basic block whose layers are named differently from torchvision's."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv_a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm_a = nn.BatchNorm2d(cout)
        self.conv_b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm_b = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(cin, cout, 1, stride, bias=False), norm=nn.BatchNorm2d(cout)
                )
            )

    def forward(self, x):
        y = self.norm_b(self.conv_b(F.relu(self.norm_a(self.conv_a(x)))))
        return F.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class HandwrittenResNet18(nn.Module):
    """ResNet-18 written from scratch: ``stem``, ``stages[i][j]``, ``classifier``."""

    def __init__(self, widths=(64, 128, 256, 512), classes=1000):
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(3, widths[0], 7, 2, 3, bias=False),
                norm=nn.BatchNorm2d(widths[0]),
                act=nn.ReLU(),
                pool=nn.MaxPool2d(3, 2, 1),
            )
        )
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(Block(cin, w, 1 if i == 0 else 2), Block(w, w, 1)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(widths[-1], classes)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# torchvision's names → the handwritten ones, as regex substitutions applied in order
RESNET_RENAMES = [
    (r"^conv1\.", "stem.conv."),
    (r"^bn1\.", "stem.norm."),
    (r"^fc\.", "classifier."),
    *[(rf"^layer{i + 1}\.", f"stages.{i}.") for i in range(4)],
    (r"\.conv1\.", ".conv_a."),
    (r"\.bn1\.", ".norm_a."),
    (r"\.conv2\.", ".conv_b."),
    (r"\.bn2\.", ".norm_b."),
    (r"\.downsample\.0\.", ".shortcut.conv."),
    (r"\.downsample\.1\.", ".shortcut.norm."),
]


def _check_renamed_resnet(path, npz_path, widths, classes):
    module = HandwrittenResNet18(widths, classes).eval()
    report = pt2interp.load_weights(module, path, rename=RESNET_RENAMES)
    assert report.ok and report.applied and not report.matched
    assert (
        report.renamed["layer2.0.downsample.1.running_var"]
        == "stages.1.0.shortcut.norm.running_var"
    )
    assert len(report.renamed) == len(module.state_dict())
    ref = np.load(npz_path)
    with torch.no_grad():
        out = module(torch.from_numpy(ref["in_0"]))
    torch.testing.assert_close(out, torch.from_numpy(ref["out"]), rtol=1e-5, atol=1e-5)


def test_load_weights_renames_into_a_handwritten_tiny_resnet():
    c = case("zoo", "tiny_resnet")
    _check_renamed_resnet(c.path, c.path.with_suffix(".npz"), (4, 8, 16, 32), 10)


@pytest.mark.slow
def test_load_weights_renames_into_a_handwritten_resnet18():
    from fixtures.make_fixtures import ensure_large_fixture

    folder = ensure_large_fixture("resnet18")
    _check_renamed_resnet(
        folder / "resnet18.pt2", folder / "resnet18.npz", (64, 128, 256, 512), 1000
    )


def test_a_shape_mismatch_leaves_the_module_unchanged():
    module = HandwrittenResNet18((4, 8, 16, 32), classes=11).eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(LoadWeightsError) as err:
        pt2interp.load_weights(module, case("zoo", "tiny_resnet").path, rename=RESNET_RENAMES)
    report = err.value.report
    assert [(m.target, m.source) for m in report.shape_mismatches] == [
        ("classifier.weight", "fc.weight"),
        ("classifier.bias", "fc.bias"),
    ]
    assert "classifier.weight (from fc.weight): module has [11, 32], source has [10, 32]" in str(
        err.value
    )
    assert not report.applied
    for k, v in module.state_dict().items():
        assert_bitwise_equal(v, before[k], k)
    # strict=False does not relax shape checks either
    with pytest.raises(LoadWeightsError):
        pt2interp.load_weights(
            module, case("zoo", "tiny_resnet").path, rename=RESNET_RENAMES, strict=False
        )


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(16, 32)
        self.second = nn.Linear(32, 8)
        self.extra = nn.Linear(2, 2)


def test_strictness_and_the_report():
    path = case("zoo", "mlp").path
    module = _MLP()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(LoadWeightsError) as err:
        pt2interp.load_weights(module, path)
    r = err.value.report
    assert r.missing == list(module.state_dict()) and set(r.unexpected) == {
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    }
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    # a dict maps module prefixes; strict=False loads what fits and reports the rest
    report = pt2interp.load_weights(
        module, path, strict=False, rename={"fc1": "first", "fc2": "second"}
    )
    assert report.applied and report.renamed == {
        "fc1.weight": "first.weight",
        "fc1.bias": "first.bias",
        "fc2.weight": "second.weight",
        "fc2.bias": "second.bias",
    }
    assert report.missing == ["extra.weight", "extra.bias"] and report.unexpected == []
    want = pt2interp.extract_weights(path)
    assert torch.equal(module.first.weight, want["fc1.weight"])
    assert torch.equal(module.extra.weight, before["extra.weight"])
    # a callable works as well; returning None means "no place for it"
    mod2 = nn.Sequential(OrderedDict(fc1=nn.Linear(16, 32), fc2=nn.Linear(32, 8)))
    report = pt2interp.load_weights(mod2, path, rename=lambda n: None)
    assert report.ok and len(report.matched) == 4


def test_dtype_and_device_conversion_and_dtype_checks():
    path = case("zoo", "mlp").path
    want = pt2interp.extract_weights(path)
    module = nn.Sequential(OrderedDict(fc1=nn.Linear(16, 32), fc2=nn.Linear(32, 8))).double()
    with pytest.raises(LoadWeightsError) as err:
        pt2interp.load_weights(module, path)
    assert [m.target for m in err.value.report.dtype_mismatches] == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    ]
    param = module.fc1.weight
    pt2interp.load_weights(module, path, dtype=torch.float16, device="cpu")
    assert module.fc1.weight is param and param.dtype == torch.float16
    assert torch.equal(param, want["fc1.weight"].half())


def test_load_weights_reads_a_pt2_of_the_cross_version_set():
    c = case("torch-2.7.1", "mini_gpt")
    sd = pt2interp.extract_weights(c.path)
    # a module built from the stored names alone: one parameter per name
    module = nn.Module()
    for name, t in sd.items():
        owner = module
        *parents, leaf = name.split(".")
        for p in parents:
            if not hasattr(owner, p):
                owner.add_module(p, nn.Module())
            owner = getattr(owner, p)
        owner.register_parameter(leaf, nn.Parameter(torch.zeros_like(t)))
    report = pt2interp.load_weights(module, c.path)
    assert report.ok
    assert all(torch.equal(module.get_parameter(n), t) for n, t in sd.items())
    assert re.search(r"\d+ matched by name", str(report))


def test_a_tied_module_tensor_is_filled_through_either_name():
    from fixtures import zoo

    c = case("zoo", "mini_gpt")
    weights = dict(pt2interp.extract_weights(c.path))
    del weights["tok_emb.weight"]  # as torch 2.5 to 2.7 stored a tied pair: one name only
    module = zoo.ZOO["mini_gpt"].module()
    report = pt2interp.load_weights(module, weights, strict=True)
    assert report.ok and report.tied == {"tok_emb.weight": "head.weight"}
    assert module.head.weight is module.tok_emb.weight
    _assert_outputs_match(c, module)


def test_load_weights_takes_numpy_weights_too():
    c = case("zoo", "bf16_mlp")
    from fixtures import zoo

    module = zoo.ZOO["bf16_mlp"].module()
    report = pt2interp.load_weights(module, pt2interp.extract_weights(c.path, backend="numpy"))
    assert report.ok
    want = torch.load(c.state_dict_path, weights_only=True)
    for name, t in module.state_dict().items():
        assert_bitwise_equal(t, want[name], name)
