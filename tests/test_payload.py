"""The payload records (pt2interp.payload) and the byte order both backends read them in.

Every layout's weights become records that the torch and numpy backends only materialize; the
records agree with what torch itself loads, and a big-endian archive (complex tensors
included) reads as torch reads a big-endian ``torch.save``: each unit swapped as
``torch.UntypedStorage.byteswap`` swaps it, a complex number's real and imaginary halves
separately.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_cases import case, torch_loads_or_skip
from helpers import assert_bitwise_equal, export_or_skip, rewrite_zip, save_or_skip

import pt2interp
from pt2interp.archive import open_archive
from pt2interp.byteorder import swap_unit, to_native
from pt2interp.extract import numpy_to_torch
from pt2interp.payload import (
    MAX_ZERO_FILL_BYTES,
    OpaqueRecord,
    PickledRecord,
    TensorRecord,
    read_payloads,
)

# -- the byte swap is torch's ------------------------------------------------------------------

SWAPPED_DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.complex32,
    torch.complex64,
    torch.complex128,
]


@pytest.mark.parametrize("dtype", SWAPPED_DTYPES, ids=str)
def test_swap_is_torchs_storage_byteswap(dtype):
    raw = bytes(range(1, 65))  # 64 bytes: a whole number of elements of every dtype
    storage = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8)
    storage.byteswap(dtype)
    name = str(dtype).removeprefix("torch.")
    itemsize = torch.empty(0, dtype=dtype).element_size()
    assert bytes(to_native(raw, swap_unit(name, itemsize))) == bytes(storage)


# -- a big-endian archive -----------------------------------------------------------------------


class _Complex(torch.nn.Module):
    """A float32 parameter and complex64 / complex128 buffers (persistent and not)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(4, generator=g))
        self.register_buffer(
            "c64", torch.complex(torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g))
        )
        c128 = torch.complex(
            torch.randn(5, generator=g, dtype=torch.float64),
            torch.randn(5, generator=g, dtype=torch.float64),
        )
        self.register_buffer("c128", c128, persistent=False)

    def forward(self, x):
        return x * self.w + self.c64.real.sum() + self.c128.imag.sum().float()


def _big_endian(t: torch.Tensor) -> bytes:
    """The bytes a big-endian machine stores for ``t``: numpy's big-endian complex keeps
    real then imaginary, each a big-endian float, as torch does."""
    a = t.detach().contiguous().numpy()
    return a.astype(a.dtype.newbyteorder(">")).tobytes()


def _torch_reads_big_endian(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What torch.load gives for a torch.save of ``tensors`` written on a big-endian machine:
    a little-endian save with each storage's bytes and the byteorder member replaced."""
    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in tensors.items()}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        names = z.namelist()
        prefix = names[0].split("/", 1)[0]
        storages = sorted(n for n in names if n.startswith(f"{prefix}/data/"))
    assert len(storages) == len(tensors)
    # torch.save numbers storages in the order the pickle meets them: the dict's order
    replace = {n: _big_endian(t) for n, t in zip(storages, tensors.values())}
    replace[f"{prefix}/byteorder"] = b"big"
    src, dst = io.BytesIO(buf.getvalue()), io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, replace.get(info.filename, zin.read(info.filename)))
    return torch.load(io.BytesIO(dst.getvalue()), weights_only=True)


@pytest.fixture(scope="module")
def big_endian_archive(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], torch.nn.Module]:
    module = _Complex()
    folder = tmp_path_factory.mktemp("big_endian")
    little = save_or_skip(export_or_skip(module, (torch.ones(4),)), folder / "little.pt2")
    want = {"w": module.w.detach(), "c64": module.c64, "c128": module.c128}
    replace: dict[str, bytes | None] = {}
    with zipfile.ZipFile(little) as z:
        top = z.namelist()[0].split("/", 1)[0]
        if f"{top}/data/weights/model_weights_config.json" not in z.namelist():
            pytest.skip(
                f"torch {torch.__version__} pickles the weights (the layout before torch 2.8): "
                "there are no raw records to store big-endian"
            )
        for kind in ("weights", "constants"):
            config = json.loads(z.read(f"{top}/data/{kind}/model_{kind}_config.json"))["config"]
            for name, meta in config.items():
                assert not meta["use_pickle"]
                replace[f"{top}/data/{kind}/{meta['path_name']}"] = _big_endian(want[name])
    replace[f"{top}/byteorder"] = b"big"
    return rewrite_zip(little, folder / "big.pt2", replace=replace), want, module


def test_torch_swaps_complex_halves_apart(big_endian_archive):
    """The reference: torch.load of big-endian bytes gives back the values saved."""
    _, want, _ = big_endian_archive
    got = _torch_reads_big_endian(want)
    for name, t in want.items():
        assert_bitwise_equal(got[name], t, name)


def test_big_endian_records_say_how_to_swap(big_endian_archive):
    path, _, _ = big_endian_archive
    stored = read_payloads(open_archive(path), "model")
    units = {r.name: (r.byteorder, r.swap_unit) for r in stored.state + stored.constants}
    assert units == {"w": ("big", 4), "c64": ("big", 4), "c128": ("big", 8)}


def test_both_backends_read_big_endian_complex_as_torch_does(big_endian_archive):
    path, tensors, _ = big_endian_archive
    want = _torch_reads_big_endian(tensors)
    program = pt2interp.read_program(path)
    by_torch = {**program.state_dict(), **program.constants()}
    by_numpy = pt2interp.extract_weights(path, backend="numpy", include_constants=True)
    assert set(by_torch) == set(by_numpy) == set(want)
    for name, t in want.items():
        assert_bitwise_equal(by_torch[name], t, f"torch backend: {name}")
        assert_bitwise_equal(numpy_to_torch(by_numpy[name], by_numpy.dtypes[name]), t, name)


def test_big_endian_archive_runs(big_endian_archive):
    path, _, module = big_endian_archive
    x = torch.arange(4, dtype=torch.float32)
    torch.testing.assert_close(pt2interp.load(path)(x), module(x), rtol=0, atol=0)


# -- records of every layout agree with torch ---------------------------------------------------


@pytest.mark.parametrize("folder", ["torch-2.5.1", "torch-2.8.0"])
def test_pickled_layouts_are_one_record_per_payload(folder):
    c = case(folder, "mlp")
    arc = open_archive(c.path)
    stored = read_payloads(arc, "model")
    (state,) = stored.state
    assert isinstance(state, PickledRecord) and state.name is None
    want = torch.load(io.BytesIO(arc.read(state.relative)), weights_only=True)
    assert list(want) == list(pt2interp.read_program(c.path).state_dict())


@pytest.mark.parametrize("name", ["mlp", "mini_gpt", "bf16_mlp", "small_cnn", "counter"])
def test_raw_records_are_what_torch_loads(name):
    c = case("zoo", name)
    ep = torch_loads_or_skip(c.path)
    want = {**ep.state_dict, **ep.constants}
    stored = read_payloads(open_archive(c.path), "model")
    records = [r for r in stored.state + stored.constants if not isinstance(r, OpaqueRecord)]
    assert {r.name for r in records} == set(want)
    for r in records:
        assert isinstance(r, TensorRecord)
        t = want[r.name]
        assert (r.dtype, r.sizes, r.strides) == (str(t.dtype)[6:], tuple(t.shape), t.stride())
        assert r.storage_offset == t.storage_offset() and r.numel == t.numel()
        start, end = r.byte_range
        assert 0 <= start <= end <= r.record_bytes
        assert end - start <= t.untyped_storage().nbytes()
    by_member: dict[str, set] = {}
    for r in records:
        by_member.setdefault(r.member, set()).add(want[r.name].untyped_storage().data_ptr())
    assert all(len(ptrs) == 1 for ptrs in by_member.values()), "a record holds one storage"


def test_tied_weights_share_a_record_and_storage():
    c = case("zoo", "mini_gpt")
    stored = read_payloads(open_archive(c.path), "model")
    members = [r.member for r in stored.state]
    assert len(set(members)) < len(members)
    state = pt2interp.read_program(c.path).state_dict()
    arrays = pt2interp.extract_weights(c.path, backend="numpy")
    for a in stored.state:
        for b in stored.state:
            if a.member == b.member and a is not b:
                assert state[a.name].untyped_storage().data_ptr() == (
                    state[b.name].untyped_storage().data_ptr()
                )
                assert np.shares_memory(arrays[a.name], arrays[b.name])


# -- one zeros budget per archive ----------------------------------------------------------------


def _empty_records(path: Path, dst: Path, numel: int) -> Path:
    """``path`` with every raw record emptied and each tensor declaring ``numel`` float64s."""
    replace: dict[str, bytes | None] = {}
    with zipfile.ZipFile(path) as z:
        top = z.namelist()[0].split("/", 1)[0]
        for kind in ("weights", "constants"):
            member = f"{top}/data/{kind}/model_{kind}_config.json"
            doc = json.loads(z.read(member))
            for meta in doc["config"].values():
                tm = meta["tensor_meta"]
                tm["dtype"] = 8  # float64
                tm["sizes"], tm["strides"] = [{"as_int": numel}], [{"as_int": 1}]
                replace[f"{top}/data/{kind}/{meta['path_name']}"] = b""
            replace[member] = json.dumps(doc).encode()
    return rewrite_zip(path, dst, replace=replace)


def test_zeros_budget_is_shared_by_weights_and_constants(big_endian_archive, tmp_path):
    """Three tensors of a third of the budget each fit; of half of it each they do not,
    though neither the weights nor the constants alone ask for more than the budget."""
    path, _, _ = big_endian_archive
    third = _empty_records(path, tmp_path / "third.pt2", MAX_ZERO_FILL_BYTES // 8 // 3)
    stored = read_payloads(open_archive(third), "model")
    assert all(r.zero_fill for r in stored.state + stored.constants)
    half = _empty_records(path, tmp_path / "half.pt2", MAX_ZERO_FILL_BYTES // 8 // 2)
    with pytest.raises(pt2interp.WeightError, match="c128.*bytes of zeros"):
        read_payloads(open_archive(half), "model")
