"""Tests for pt2interp.torch_pickle: torch.save payloads read without torch.

torch is used here only to write payloads and to compute the reference values.
"""

from __future__ import annotations

import collections
import doctest
import io
import math
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pt2interp import torch_pickle
from pt2interp.errors import WeightError
from pt2interp.torch_pickle import RAW_BITS_DTYPES, RawTensor, load_torch_save

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
FIXTURE_VERSIONS = ("torch-2.5.1", "torch-2.7.1")
SOURCE = "model.pt2:serialized_state_dict.pt"

_DTYPE_NAMES = [
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "bool",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "uint16",
    "uint32",
    "uint64",
    "complex32",
    "float4_e2m1fn_x2",
]
ALL_DTYPES = [getattr(torch, n) for n in _DTYPE_NAMES if hasattr(torch, n)]


def _torch_saves(dtype: torch.dtype) -> bool:
    try:
        torch.save(torch.zeros(2, dtype=dtype), io.BytesIO())
    except Exception:  # noqa: BLE001 (torch 2.5 raises KeyError for uint16/32/64)
        return False
    return True


# What the installed torch can write: the payloads these tests read are made by torch.save.
SAVABLE_DTYPES = [d for d in ALL_DTYPES if _torch_saves(d)]


def skip_unless_savable(dtype: torch.dtype) -> None:
    if dtype not in SAVABLE_DTYPES:
        pytest.skip(f"torch {torch.__version__} cannot torch.save {dtype}")


try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None


# ---------------------------------------------------------------------------------------------
# helpers


def save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load(payload, **kwargs):
    return load_torch_save(payload, source=SOURCE, **kwargs)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def random_tensor(dtype: torch.dtype, shape, seed: int = 0) -> torch.Tensor:
    """Random bit patterns (NaNs included): comparisons below are bitwise."""
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    if dtype == torch.bool:
        return torch.from_numpy(rng.integers(0, 2, n).astype(np.bool_)).reshape(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = rng.integers(0, 256, n * itemsize, dtype=np.uint8)
    return torch.from_numpy(raw).view(dtype).reshape(shape)


def torch_bits(t: torch.Tensor) -> np.ndarray:
    if t.numel() == 0:
        return np.empty(0, np.uint8)
    t = t.detach().resolve_conj().resolve_neg()
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(t.element_size())
    if bits is not None:  # copied as integers: torch 2.8 has no copy kernel for float4
        t = t.view(bits)
    t = t.contiguous().reshape(-1)
    if t.stride() != (1,):  # contiguous() leaves one-element tensors' strides alone
        t = t.as_strided((t.numel(),), (1,))
    return t.view(torch.uint8).numpy()


def raw_bits(rt: RawTensor) -> np.ndarray:
    return np.ascontiguousarray(rt.array).reshape(-1).view(np.uint8)


def expected_numpy_dtype(name: str) -> np.dtype:
    if name in RAW_BITS_DTYPES:
        return np.dtype(
            {1: np.uint8, 2: np.uint16, 4: np.uint32}[
                torch.empty((), dtype=getattr(torch, name)).element_size()
            ]
        )
    if ml_dtypes is not None and hasattr(ml_dtypes, name):
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def assert_tensor_matches(rt, t: torch.Tensor, where: str = "") -> None:
    assert isinstance(rt, RawTensor), where
    assert rt.dtype == dtype_name(t.dtype), where
    assert rt.shape == tuple(t.shape), where
    assert rt.strides == tuple(t.stride()), where
    assert rt.storage_offset == t.storage_offset(), where
    assert rt.is_parameter == isinstance(t, torch.nn.Parameter), where
    assert rt.array.shape == rt.shape, where
    assert rt.array.dtype == expected_numpy_dtype(rt.dtype), where
    assert not rt.array.flags.writeable, where
    np.testing.assert_array_equal(raw_bits(rt), torch_bits(t), err_msg=where)


def assert_same(ours, theirs, where: str = "root") -> None:
    """Structure, tensors bitwise, and storage sharing equal to what torch.load returns."""
    if isinstance(theirs, torch.Tensor):
        assert_tensor_matches(ours, theirs, where)
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict), where
        assert list(ours) == list(theirs), where
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs and type(ours) is type(theirs), where


def tensor_pairs(ours, theirs):
    if isinstance(theirs, torch.Tensor):
        yield ours, theirs
    elif isinstance(theirs, dict):
        for key in theirs:
            yield from tensor_pairs(ours[key], theirs[key])
    elif isinstance(theirs, (list, tuple)):
        for a, b in zip(ours, theirs):
            yield from tensor_pairs(a, b)


def assert_same_ties(ours, theirs) -> None:
    """Two tensors share a storage key exactly when torch gives them one storage."""
    pairs = list(tensor_pairs(ours, theirs))
    for a, ta in pairs:
        for b, tb in pairs:
            same_storage = ta.untyped_storage().data_ptr() == tb.untyped_storage().data_ptr()
            assert (a.storage_key == b.storage_key) == same_storage
            if same_storage and a.array.size and b.array.size:
                assert a.array.base is not None
                assert (
                    _buffer_start(a) - a.storage_offset * a.array.itemsize
                    == _buffer_start(b) - b.storage_offset * b.array.itemsize
                )


def _buffer_start(rt: RawTensor) -> int:
    return rt.array.__array_interface__["data"][0]


def make_zip(
    pkl: bytes,
    files=None,
    *,
    prefix="archive",
    byteorder: str | None = "little",
    compression=zipfile.ZIP_STORED,
) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(f"{prefix}/data.pkl", pkl, compress_type=compression)
        if byteorder is not None:
            z.writestr(f"{prefix}/byteorder", byteorder)
        for key, data in (files or {}).items():
            z.writestr(f"{prefix}/data/{key}", data)
        z.writestr(f"{prefix}/version", "3\n")
    return out.getvalue()


def rewrite(payload: bytes, replace=None, drop=()) -> bytes:
    """Copy a torch.save zip, replacing or dropping members named by their path after the prefix."""
    replace = replace or {}
    src = zipfile.ZipFile(io.BytesIO(payload))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            inner = info.filename.split("/", 1)[1]
            if inner in drop:
                continue
            data = replace[inner] if inner in replace else src.read(info)
            if callable(data):
                data = data(src.read(info))
            z.writestr(info.filename, data)
    return out.getvalue()


class Storage:
    """Pickled as a torch persistent id by CraftPickler."""

    def __init__(self, key, storage_type, numel):
        self.key, self.storage_type, self.numel = key, storage_type, numel


class FakeTensor:
    """Pickles like a tensor (through the real torch._utils functions) with any geometry."""

    def __init__(self, storage, offset, size, stride, dtype=None):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())
        self.dtype = dtype

    def __reduce__(self):
        if self.dtype is None:
            return torch._utils._rebuild_tensor_v2, self.args
        return torch._utils._rebuild_tensor_v3, self.args + (self.dtype,)


class CraftPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def craft(obj, files=None, **kwargs) -> bytes:
    buf = io.BytesIO()
    CraftPickler(buf, protocol=2).dump(obj)
    return make_zip(buf.getvalue(), files, **kwargs)


def expect_error(payload, *fragments, source=SOURCE) -> str:
    with pytest.raises(WeightError) as info:
        load_torch_save(payload, source=source)
    message = str(info.value)
    assert source in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------------------------------------
# round trips


def _has_copy_kernel(dtype: torch.dtype) -> bool:
    try:
        torch.empty(2, 2, dtype=dtype).t().contiguous()
    except (NotImplementedError, RuntimeError):  # torch 2.8 has none for float4_e2m1fn_x2
        return False
    return True


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_name)
def test_round_trip_every_dtype(dtype):
    skip_unless_savable(dtype)
    if not _has_copy_kernel(dtype):
        pytest.skip(f"torch {torch.__version__} cannot copy {dtype}, which the comparison needs")
    base = random_tensor(dtype, (4, 6), seed=1)
    saved = {
        "base": base,
        "t": base.t(),
        "slice": base[1:, 2:5],
        "step": base[::2, ::3],
        "scalar": base[2, 3],
        "empty": base[4:],
    }
    result = load(save(saved))
    assert list(result) == list(saved)
    for name, t in saved.items():
        assert_tensor_matches(result[name], t, name)
    assert len({rt.storage_key for rt in result.values()}) == 1
    assert_same_ties(result, saved)


@pytest.mark.parametrize(
    "dtype", [d for d in ALL_DTYPES if dtype_name(d) not in RAW_BITS_DTYPES], ids=dtype_name
)
def test_values_are_numbers_where_numpy_has_the_dtype(dtype):
    skip_unless_savable(dtype)
    t = (torch.arange(-6, 6) % 5).to(dtype).reshape(3, 4)
    rt = load(save({"t": t}))["t"]
    if dtype.is_complex:
        np.testing.assert_array_equal(rt.array, t.numpy())
    else:
        np.testing.assert_array_equal(rt.array.astype(np.float64), t.to(torch.float64).numpy())


def test_bfloat16_bits():
    t = torch.tensor([1.5, -2.0, float("inf"), 3.140625], dtype=torch.bfloat16)
    rt = load(save({"t": t}))["t"]
    bits = t.view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(rt.array.view(np.uint16), bits)
    if ml_dtypes is None:
        assert rt.array.dtype == np.uint16 and "bfloat16" in RAW_BITS_DTYPES
    else:
        assert rt.array.dtype == ml_dtypes.bfloat16 and "bfloat16" not in RAW_BITS_DTYPES
        np.testing.assert_array_equal(rt.array.astype(np.float32), t.float().numpy())


def test_complex32_is_raw_bits_and_float8_raw_without_ml_dtypes():
    assert "complex32" in RAW_BITS_DTYPES and "float4_e2m1fn_x2" in RAW_BITS_DTYPES
    assert ("float8_e4m3fn" in RAW_BITS_DTYPES) == (ml_dtypes is None)


def test_what_torch_pickles_for_each_dtype():
    """Typed storages for the legacy dtypes, UntypedStorage + dtype global (v3) for the rest."""
    typed = {
        "float32": "FloatStorage",
        "bfloat16": "BFloat16Storage",
        "bool": "BoolStorage",
        "complex64": "ComplexFloatStorage",
        "int64": "LongStorage",
        "uint8": "ByteStorage",
    }
    for name, storage in typed.items():
        pkl = zipfile.ZipFile(io.BytesIO(save(torch.zeros(2, dtype=getattr(torch, name))))).read(
            "archive/data.pkl"
        )
        assert f"ctorch\n{storage}\n".encode() in pkl
        assert b"_rebuild_tensor_v2" in pkl
    for name in ("float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64"):
        if getattr(torch, name) not in SAVABLE_DTYPES:
            continue
        pkl = zipfile.ZipFile(io.BytesIO(save(torch.zeros(2, dtype=getattr(torch, name))))).read(
            "archive/data.pkl"
        )
        assert b"ctorch.storage\nUntypedStorage\n" in pkl and b"_rebuild_tensor_v3" in pkl
        assert f"ctorch\n{name}\n".encode() in pkl


def test_tied_tensors_share_memory():
    weight = torch.randn(4, 5)
    storage_views = torch.arange(20.0)
    saved = {
        "embed.weight": weight,
        "lm_head.weight": weight,  # two names, one tensor
        "a": storage_views[2:12],
        "b": storage_views.view(4, 5)[1:],  # two views, one storage
        "far": storage_views[15:],
        "param": torch.nn.Parameter(storage_views[:5]),
    }
    result = load(save(saved))
    assert_same(result, saved)
    assert_same_ties(result, saved)
    assert result["embed.weight"].storage_key == result["lm_head.weight"].storage_key
    assert np.shares_memory(result["embed.weight"].array, result["lm_head.weight"].array)
    assert np.shares_memory(result["a"].array, result["b"].array)
    assert np.shares_memory(result["param"].array, result["a"].array)
    assert not np.shares_memory(result["far"].array, result["a"].array)
    assert result["far"].storage_key == result["a"].storage_key
    assert result["param"].is_parameter and not result["a"].is_parameter


def test_parameters():
    plain = torch.nn.Parameter(torch.randn(3, 2))
    frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    with_state = torch.nn.Parameter(torch.randn(2, 2))
    with_state.marker = "anything"  # makes torch use _rebuild_parameter_with_state
    payload = save({"plain": plain, "frozen": frozen, "with_state": with_state})
    assert b"_rebuild_parameter_with_state" in zipfile.ZipFile(io.BytesIO(payload)).read(
        "archive/data.pkl"
    )
    result = load(payload)
    for name in ("plain", "frozen", "with_state"):
        assert result[name].is_parameter
    assert_same(result, torch.load(io.BytesIO(payload), weights_only=True))


def test_nested_containers_and_state_dict_metadata():
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    saved = {
        "state": module.state_dict(),  # an OrderedDict carrying a _metadata attribute
        "list": [torch.ones(2), (torch.zeros(1, dtype=torch.int64), None), {"x": 1.5}],
        "tuple": (1, "two", 3.0, True, None, -(2**70)),
        "ordered": collections.OrderedDict([("z", torch.eye(2)), ("a", 7)]),
        "empty": {},
    }
    result = load(save(saved))
    assert_same(result, saved)
    assert isinstance(result["ordered"], collections.OrderedDict)
    assert list(result["state"]) == list(module.state_dict())
    assert result["state"]._metadata == module.state_dict()._metadata


def test_conj_and_neg_bits_are_materialized():
    z, w = torch.randn(3, dtype=torch.complex64), torch.randn(3, dtype=torch.complex128)
    saved = {"conj": z.conj(), "neg": w.conj().imag, "negf": torch._neg_view(torch.randn(4))}
    assert saved["conj"].is_conj() and saved["neg"].is_neg()
    result = load(save(saved))
    for name, t in saved.items():
        np.testing.assert_array_equal(result[name].array, t.resolve_conj().resolve_neg().numpy())
        assert not result[name].array.flags.writeable


def test_inputs_bytes_bytearray_memoryview_and_files(tmp_path):
    saved = {"w": torch.randn(2, 3)}
    payload = save(saved)
    path = tmp_path / "w.pt"
    path.write_bytes(payload)
    with open(path, "rb") as f:
        from_file = load_torch_save(f, source=str(path))
    for result in (
        load(payload),
        load(bytearray(payload)),
        load(memoryview(payload)),
        load(io.BytesIO(payload)),
        from_file,
    ):
        assert_same(result, saved)


def test_prefix_is_read_from_the_archive(tmp_path):
    path = tmp_path / "my_weights.pt"
    torch.save({"w": torch.arange(3)}, path)
    payload = path.read_bytes()
    assert zipfile.ZipFile(io.BytesIO(payload)).namelist()[0].startswith("my_weights/")
    np.testing.assert_array_equal(load(payload)["w"].array, [0, 1, 2])


def test_crafted_payloads_match_torch():
    """The crafting helpers used by the hostile tests build what torch itself accepts."""
    data = np.arange(6, dtype=np.float32).tobytes()
    payload = craft(
        {"t": FakeTensor(Storage("0", torch.FloatStorage, 6), 1, (2, 2), (1, 2))}, {"0": data}
    )
    assert_same(load(payload), torch.load(io.BytesIO(payload), weights_only=True))


def _swap_unit(name: str) -> int:
    size = torch.empty((), dtype=getattr(torch, name)).element_size()
    return size // 2 if name.startswith("complex") else size


def test_big_endian_payloads_are_converted():
    saved = {
        name: random_tensor(getattr(torch, name), (3, 4), seed=i)
        for i, name in enumerate(
            [
                "float32",
                "float64",
                "complex64",
                "complex128",
                "int64",
                "int16",
                "bfloat16",
                "float16",
                "bool",
                "uint16",
                "uint32",
                "uint64",
                "float8_e5m2",
                "complex32",
            ]
        )
        if getattr(torch, name) in SAVABLE_DTYPES
    }
    saved["float32_view"] = saved["float32"][1:].t()
    little = save(saved)
    keys = {name: rt.storage_key for name, rt in load(little).items()}

    def swapper(unit):
        return lambda raw: np.frombuffer(raw, f"u{unit}").byteswap().tobytes() if unit > 1 else raw

    big = rewrite(
        little,
        replace={
            "byteorder": b"big",
            **{
                f"data/{keys[name]}": swapper(_swap_unit(name))
                for name in saved
                if "view" not in name
            },
        },
    )
    result = load(big)
    assert_same(result, saved)
    assert np.shares_memory(result["float32"].array, result["float32_view"].array)
    # torch converts typed storages the same way, which checks how the payload was built.
    reference = torch.load(io.BytesIO(big), weights_only=True)
    for name in ("float32", "float64", "complex64", "int64", "bfloat16", "bool"):
        assert_tensor_matches(result[name], reference[name], name)


def test_missing_byteorder_means_little():
    payload = rewrite(save({"w": torch.arange(4, dtype=torch.int32)}), drop={"byteorder"})
    np.testing.assert_array_equal(load(payload)["w"].array, [0, 1, 2, 3])


# ---------------------------------------------------------------------------------------------
# real archives


def _fixture_archives():
    params = []
    for version in FIXTURE_VERSIONS:
        folder = FIXTURES / version
        archives = sorted(folder.glob("*.pt2")) if folder.is_dir() else []
        params += [pytest.param(p, id=f"{version}/{p.name}") for p in archives]
        if not archives:
            params.append(
                pytest.param(
                    None,
                    id=version,
                    marks=pytest.mark.skip(
                        reason=f"{folder} has no .pt2 fixtures; "
                        "copy the cross-version fixtures there"
                    ),
                )
            )
    return params


@pytest.mark.parametrize("archive", _fixture_archives())
def test_real_archives_match_torch_load(archive):
    with zipfile.ZipFile(archive) as pt2:
        members = [
            n
            for n in (
                "serialized_state_dict.pt",
                "serialized_constants.pt",
                "serialized_example_inputs.pt",
            )
            if n in pt2.namelist()
        ]
        assert members[:2] == ["serialized_state_dict.pt", "serialized_constants.pt"]
        for member in members:
            payload = pt2.read(member)
            ours = load_torch_save(payload, source=f"{archive.name}:{member}")
            theirs = torch.load(io.BytesIO(payload), weights_only=True)
            assert_same(ours, theirs, member)
            assert_same_ties(ours, theirs)


def _first_fixture() -> Path | None:
    for version in FIXTURE_VERSIONS:
        archives = sorted((FIXTURES / version).glob("*.pt2"))
        if archives:
            return archives[0]
    return None


_NO_TORCH_SCRIPT = """
import sys, zipfile
from pt2interp.torch_pickle import RawTensor, load_torch_save
path, member = sys.argv[1], sys.argv[2]
if member:
    with zipfile.ZipFile(path) as z:
        payload = z.read(member)
else:
    payload = open(path, "rb").read()
result = load_torch_save(payload, source=path)
tensors = [v for v in result.values() if isinstance(v, RawTensor)]
assert tensors, result
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, loaded
print("ok", len(tensors))
"""


def _run_without_torch(path: Path, member: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_SCRIPT, str(path), member],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok ")


def test_loads_a_real_archive_without_importing_torch():
    archive = _first_fixture()
    if archive is None:
        pytest.skip(f"no .pt2 fixtures under {FIXTURES}; copy the cross-version fixtures there")
    _run_without_torch(archive, "serialized_state_dict.pt")


def test_loads_every_dtype_without_importing_torch(tmp_path):
    path = tmp_path / "all.pt"
    torch.save({dtype_name(d): random_tensor(d, (2, 3)) for d in SAVABLE_DTYPES}, path)
    _run_without_torch(path, "")


def test_module_docstring_example(monkeypatch):
    if not (FIXTURES / "torch-2.5.1" / "mlp.pt2").is_file():
        pytest.skip(f"{FIXTURES / 'torch-2.5.1' / 'mlp.pt2'} is absent")
    monkeypatch.chdir(REPO)
    outcome = doctest.testmod(torch_pickle)
    assert outcome.attempted > 0 and outcome.failed == 0


# ---------------------------------------------------------------------------------------------
# hostile payloads


def _placeholder(*args):  # stands in for a dangerous global while pickling
    raise AssertionError("never called")


class Evil:
    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return _placeholder, self.args


def with_global(payload: bytes, module: str, name: str) -> bytes:
    """Point the placeholder GLOBAL opcode of a protocol-2 torch.save payload at module.name."""
    placeholder = f"c{_placeholder.__module__}\n_placeholder\n".encode()

    def patch(pkl):
        assert placeholder in pkl
        return pkl.replace(placeholder, f"c{module}\n{name}\n".encode())

    return rewrite(payload, replace={"data.pkl": patch})


def _attacks(marker: Path):
    quoted = repr(str(marker))
    return [
        ("os", "system", (f"touch {marker}",)),
        ("posix", "system", (f"touch {marker}",)),
        ("builtins", "exec", (f"open({quoted}, 'w').write('pwned')",)),
        ("builtins", "eval", (f"open({quoted}, 'w').write('pwned')",)),
        ("__builtin__", "eval", (f"open({quoted}, 'w').write('pwned')",)),
        ("subprocess", "Popen", (["touch", str(marker)],)),
        ("builtins", "getattr", ("text", "upper")),
        ("torch", "load", (str(marker),)),
        ("torch._utils", "_rebuild_qtensor", ()),
        ("torch._tensor", "_rebuild_from_type_v2", ()),
        ("numpy.core.multiarray", "_reconstruct", ()),
    ]


@pytest.mark.parametrize(
    "attack", range(len(_attacks(Path("x")))), ids=[f"{m}.{n}" for m, n, _ in _attacks(Path("x"))]
)
def test_malicious_globals_are_refused_and_never_run(tmp_path, attack):
    marker = tmp_path / "pwned"
    module, name, args = _attacks(marker)[attack]
    payload = with_global(save({"weight": torch.ones(3), "evil": Evil(*args)}), module, name)
    expect_error(
        payload,
        f"refusing to unpickle global '{module}.{name}' in {SOURCE}",
        "only tensor rebuild functions and storages are allowed",
    )
    assert not marker.exists()


def test_the_malicious_payload_is_live(tmp_path):
    """Without the allow-list the same payload runs: torch.load(weights_only=False) executes it."""
    marker = tmp_path / "torch_ran"
    payload = with_global(
        save({"evil": Evil(f"open({str(marker)!r}, 'w').write('x')")}), "builtins", "exec"
    )
    expect_error(payload, "'builtins.exec'")
    assert not marker.exists()
    torch.load(io.BytesIO(payload), weights_only=False)
    assert marker.exists()


def test_stack_global_protocol_4_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exec:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('pwned')",)

    expect_error(make_zip(pickle.dumps({"x": Exec()}, protocol=4)), "'builtins.exec'")
    assert not marker.exists()


def test_build_cannot_mutate_allowed_objects():
    """BUILD reaches even frozen dataclasses (their __setstate__): only _metadata is allowed."""
    tensor = save(torch.arange(4.0))
    base = zipfile.ZipFile(io.BytesIO(tensor)).read("archive/data.pkl")
    assert base.endswith(b".")
    shape_state = b"}X\x05\x00\x00\x00shapeK\x09s"
    for state in (shape_state, b"N" + shape_state + b"\x86"):  # dict state, slot state
        expect_error(
            rewrite(tensor, replace={"data.pkl": base[:-1] + state + b"b."}),
            "refusing to set state",
            "RawTensor",
        )
    targets = {
        b"ccollections\nOrderedDict\n": "class collections.OrderedDict",
        b"ctorch._utils\n_rebuild_tensor_v2\n": "bare global torch._utils._rebuild_tensor_v2",
        b"ctorch\nfloat32\n": "bare dtype torch.float32",
        b"ctorch\nFloatStorage\n": "bare global FloatStorage",
    }
    for target, described in targets.items():
        for state in (b"}X\x04\x00\x00\x00evilK\x01s", b"N}X\x04\x00\x00\x00evilK\x01s\x86"):
            expect_error(
                make_zip(b"\x80\x02" + target + state + b"b."), "refusing to set state", described
            )
    # Setting attributes other than _metadata on an OrderedDict could shadow its methods.
    pkl = b"\x80\x02ccollections\nOrderedDict\n)R}X\x05\x00\x00\x00itemsK\x01sb."
    expect_error(make_zip(pkl), "refusing to set state")
    assert not hasattr(collections.OrderedDict, "evil")
    assert torch_pickle._DTYPES["float32"].numpy == np.float32
    assert load(save(torch.ones(2))).dtype == "float32"  # later loads are unaffected


def test_storage_file_too_short():
    payload = rewrite(save({"w": torch.arange(8.0)}), replace={"data/0": bytes(16)})
    expect_error(payload, "archive/data/0", "holds 16 bytes", "8 elements (32 bytes)", "too short")


def test_tensor_view_past_the_end_of_storage():
    storage = Storage("0", torch.FloatStorage, 4)
    payload = craft({"t": FakeTensor(storage, 2, (3,), (1,))}, {"0": bytes(16)})
    expect_error(payload, "archive/data/0", "needs 5 elements", "holds 4", "past the end")
    payload = craft({"t": FakeTensor(storage, 0, (2, 2), (3, 1))}, {"0": bytes(16)})
    expect_error(payload, "needs 5 elements", "past the end")
    # torch itself saves empty slices with offsets past the end (torch.empty(0, 1)[:, 1:]).
    payload = craft({"t": FakeTensor(storage, 5, (0, 3), (3, 1))}, {"0": bytes(16)})
    assert load(payload)["t"].array.shape == (0, 3)


def test_untyped_storage_bounds_use_the_tensor_dtype():
    storage = Storage("0", torch.UntypedStorage, 8)  # 8 bytes: four uint16, not five
    ok = craft({"t": FakeTensor(storage, 1, (3,), (1,), torch.uint16)}, {"0": bytes(range(8))})
    assert load(ok)["t"].array.tolist() == [0x0302, 0x0504, 0x0706]
    bad = craft({"t": FakeTensor(storage, 2, (3,), (1,), torch.uint16)}, {"0": bytes(8)})
    expect_error(bad, "needs 5 elements but the storage holds 4")


@pytest.mark.parametrize("size, stride", [((2,), (-1,)), ((-1,), (1,)), ((2, 2), (2, -1))])
def test_negative_sizes_and_strides(size, stride):
    payload = craft(
        {"t": FakeTensor(Storage("0", torch.FloatStorage, 4), 0, size, stride)}, {"0": bytes(16)}
    )
    expect_error(payload, "negative size or stride")


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, ("a",), (1,)), "size must be a tuple of ints"),
        ((0, (2,), (1, 1)), "differ in length"),
        ((-1, (2,), (1,)), "invalid storage offset"),
        ((True, (2,), (1,)), "invalid storage offset"),
    ],
)
def test_malformed_tensor_geometry(args, message):
    payload = craft({"t": FakeTensor(Storage("0", torch.FloatStorage, 4), *args)}, {"0": bytes(16)})
    expect_error(payload, message)


def test_unknown_storage_types():
    for storage_type in ("FloatStorage", torch.float32, None):
        payload = craft(
            {"t": FakeTensor(Storage("0", storage_type, 4), 0, (4,), (1,))}, {"0": bytes(16)}
        )
        expect_error(payload, "unknown storage type")
    payload = craft(
        {"t": FakeTensor(Storage("0", torch.QUInt8Storage, 4), 0, (4,), (1,))}, {"0": bytes(4)}
    )
    expect_error(payload, "refusing to unpickle global 'torch.QUInt8Storage'")


def test_bad_persistent_ids_and_keys():
    for key in ("../0", "", "a/b", 3):
        payload = craft(
            {"t": FakeTensor(Storage(key, torch.FloatStorage, 1), 0, (1,), (1,))}, {"0": bytes(4)}
        )
        expect_error(payload, "invalid storage key")
    payload = craft(
        {"t": FakeTensor(Storage("0", torch.FloatStorage, -1), 0, (1,), (1,))}, {"0": bytes(4)}
    )
    expect_error(payload, "invalid size")


def test_other_persistent_ids_are_refused():
    pids = [
        b"X\x03\x00\x00\x00abc",  # a string
        b"(X\x07\x00\x00\x00storaget",  # a 1-tuple
        b"N" + b"\x85" * 5000,  # 5000 nested tuples: described briefly, not in full
    ]
    for pid in pids:
        expect_error(make_zip(b"\x80\x02" + pid + b"Q."), "unsupported persistent id")


def test_inconsistent_references_to_one_storage():
    a = FakeTensor(Storage("0", torch.FloatStorage, 4), 0, (4,), (1,))
    b = FakeTensor(Storage("0", torch.FloatStorage, 2), 0, (2,), (1,))
    c = FakeTensor(Storage("0", torch.IntStorage, 4), 0, (4,), (1,))
    expect_error(craft([a, b], {"0": bytes(16)}), "inconsistent")
    expect_error(craft([a, c], {"0": bytes(16)}), "inconsistent")


def test_big_endian_storage_viewed_with_two_widths_is_refused():
    storage = Storage("0", torch.UntypedStorage, 8)
    payload = craft(
        [
            FakeTensor(storage, 0, (4,), (1,), torch.uint16),
            FakeTensor(storage, 0, (2,), (1,), torch.uint32),
        ],
        {"0": bytes(8)},
        byteorder="big",
    )
    expect_error(payload, "cannot convert it from big-endian")


def test_missing_storage_member():
    payload = rewrite(save({"w": torch.ones(2)}), drop={"data/0"})
    expect_error(payload, "storage '0' has no member archive/data/0")


def test_truncated_data_pkl():
    payload = save({"w": torch.ones(2), "b": torch.zeros(3)})
    payload = rewrite(payload, replace={"data.pkl": lambda pkl: pkl[: len(pkl) // 2]})
    expect_error(payload, "archive/data.pkl is not a valid torch pickle")


def test_non_zip_inputs():
    expect_error(b"definitely not a zip file", "not a torch.save zip archive")
    expect_error(b"", "not a torch.save zip archive")
    legacy = io.BytesIO()
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    expect_error(legacy.getvalue(), "legacy")


def test_zip_without_exactly_one_data_pkl():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/version", "3")
    expect_error(out.getvalue(), "no <prefix>/data.pkl")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("a/data.pkl", pickle.dumps(1, protocol=2))
        z.writestr("b/data.pkl", pickle.dumps(2, protocol=2))
    expect_error(out.getvalue(), "2 <prefix>/data.pkl")


def test_bad_byteorder_member():
    payload = rewrite(save({"w": torch.ones(2)}), replace={"byteorder": b"middle"})
    expect_error(payload, "archive/byteorder says 'middle'")


def test_bare_globals_storages_and_dtypes_in_the_result_are_refused():
    expect_error(save({"dtype": torch.float32}), "bare dtype torch.float32")
    expect_error(craft({"f": torch._utils._rebuild_tensor_v2}), "bare global")
    expect_error(
        craft({"s": Storage("0", torch.FloatStorage, 1)}, {"0": bytes(4)}), "bare storage '0'"
    )


def test_deep_nesting_is_refused():
    deep = b"\x80\x02N" + b"\x85" * 1000 + b"."  # 1000 nested 1-tuples
    expect_error(make_zip(deep), "nest more than 200 deep")
    nested: list = []
    for _ in range(150):
        nested = [nested]
    assert load(make_zip(pickle.dumps(nested, protocol=2))) == nested


def test_shared_subtrees_are_checked_in_linear_time():
    node: list = []
    for _ in range(150):
        node = [node, node]  # 2**150 paths, 151 distinct lists
    start = time.perf_counter()
    result = load(make_zip(pickle.dumps(node, protocol=2)))
    assert time.perf_counter() - start < 5
    assert result[0] is result[1]
    for _ in range(100):
        node = [node, node]
    expect_error(make_zip(pickle.dumps(node, protocol=2)), "nest more than 200 deep")


def test_reference_cycles_are_refused():
    loop: list = []
    loop.append(loop)
    expect_error(make_zip(pickle.dumps(loop, protocol=2)), "reference cycle")
    d: dict = {}
    d["self"] = [d]
    expect_error(make_zip(pickle.dumps(d, protocol=2)), "reference cycle")


def test_huge_memo_index_does_not_allocate():
    pkl = b"\x80\x02N" + b"r" + struct.pack("<I", 2**31 - 1) + b"."  # LONG_BINPUT
    start = time.perf_counter()
    assert load(make_zip(pkl)) is None
    assert time.perf_counter() - start < 1


def test_compression_bomb_and_oversized_pickle_are_refused(monkeypatch):
    bomb = b"\x80\x02N" + b"0" * (8 << 20) + b"."  # refused before it is unpickled
    expect_error(make_zip(bomb, compression=zipfile.ZIP_LZMA), "compression bomb")
    monkeypatch.setattr(torch_pickle, "_MAX_PICKLE_BYTES", 1000)
    expect_error(make_zip(pickle.dumps("x" * 2000, protocol=2)), "over the 1000 byte limit")


# ---------------------------------------------------------------------------------------------
# property test


@st.composite
def strided_views(draw):
    dtype = draw(st.sampled_from(SAVABLE_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
    base = random_tensor(dtype, shape, seed=draw(st.integers(0, 2**16)))
    view = base.permute(*draw(st.permutations(range(len(shape))))) if shape else base
    index = []
    for n in view.shape:
        start = draw(st.integers(0, n))
        index.append(slice(start, draw(st.integers(start, n)), draw(st.integers(1, 3))))
    return base, view[tuple(index)]


@settings(
    max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(strided_views())
def test_random_strided_views_round_trip(pair):
    base, view = pair
    saved = {"base": base, "view": view}
    result = load(save(saved))
    assert_same(result, saved)
    assert result["base"].storage_key == result["view"].storage_key
    if view.numel():
        assert np.shares_memory(result["base"].array, result["view"].array)
