"""Issue: hostile containers, and the integrity of the weights they hold.

A ``.pt2`` is a zip, and so are the ``torch.save`` payloads nested in it (the legacy
``serialized_state_dict.pt`` / ``serialized_constants.pt``, torch 2.8's ``data/weights/model.pt``,
``use_pickle`` entries), which the torch backend hands to ``torch.load`` and its own zip reader.
Every zip gets the same checks (member count before the directory is parsed, names,
duplicates, encryption, local headers that agree with the central directory, no shared or
overlapping entries, compression ratios), weight records are CRC-checked when first mapped,
and views that numpy or torch cannot make are refused by name. Each crafted archive below
goes through every entry point; each failure is a ``Pt2Error`` naming the member (and the
tensor where known). The crafted archives that could exhaust memory run in a child process
under an address-space limit, so a regression fails the test instead of the machine.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import random
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from fixture_cases import Case, case
from helpers import member_named

import pt2interp
from pt2interp import limits
from pt2interp.torch_pickle import load_torch_save

MLP = case("zoo", "mlp")
LEGACY = case("torch-2.5.1", "mlp")
V28 = case("torch-2.8.0", "mlp")
PROGRAM = member_named(MLP.path, "models/model.json")
CONFIG = member_named(MLP.path, "model_weights_config.json")
WEIGHT = member_named(MLP.path, "weights/weight_0")  # fc1.weight, 32 x 16 float32
LEGACY_STATE = "serialized_state_dict.pt"
V28_STATE = member_named(V28.path, "data/weights/model.pt")

# -- zips written by hand ------------------------------------------------------------------------

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")


def _member(
    name: str,
    data: bytes = b"",
    *,
    method: int = zipfile.ZIP_STORED,
    size: int | None = None,
    crc: int | None = None,
    flags: int = 0,
    local: dict | None = None,
    share: str | None = None,
) -> dict:
    """One entry: ``data`` as stored, central fields, ``local`` overrides of the local header's
    (flags, method, crc, csize, size, extra), ``share``: no local header of its own, the named
    one's."""
    return {
        "name": name,
        "data": data,
        "method": method,
        "size": len(data) if size is None else size,
        "crc": zlib.crc32(data) if crc is None else crc,
        "flags": flags,
        "local": local or {},
        "share": share,
    }


def _write_zip(
    members: list[dict], *, declare: int | None = None, zip64: bool = False, prefix: bytes = b""
) -> bytes:
    """A zip of ``members``; ``declare`` overrides the entry count of the end record(s)."""
    out, central, offsets = bytearray(prefix), bytearray(), {}
    for m in members:
        name = m["name"].encode()
        if m["share"] is None:
            offsets[m["name"]] = len(out) - len(prefix)
            f = {
                "flags": m["flags"],
                "method": m["method"],
                "crc": m["crc"],
                "csize": len(m["data"]),
                "size": m["size"],
                "extra": b"",
                **m["local"],
            }
            out += (
                _LOCAL.pack(
                    0x04034B50,
                    20,
                    f["flags"],
                    f["method"],
                    0,
                    0x21,
                    f["crc"],
                    f["csize"],
                    f["size"],
                    len(name),
                    len(f["extra"]),
                )
                + name
                + f["extra"]
                + m["data"]
            )
        offset = offsets[m["share"] or m["name"]]
        central += (
            _CENTRAL.pack(
                0x02014B50,
                20,
                20,
                m["flags"],
                m["method"],
                0,
                0x21,
                m["crc"],
                len(m["data"]),
                m["size"],
                len(name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + name
        )
    count = len(members) if declare is None else declare
    cd_offset = len(out) - len(prefix)
    out += central
    if zip64:
        end64 = len(out) - len(prefix)
        out += struct.pack(
            "<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, len(central), cd_offset
        )
        out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), cd_offset, 0)
    return bytes(out)


def _members_of(source: Path | bytes) -> list[dict]:
    with zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source)) as z:
        return [_member(i.filename, z.read(i)) for i in z.infolist()]


def _changed(members: list[dict], target: str, **changes) -> list[dict]:
    assert any(m["name"] == target for m in members), target
    return [{**m, **changes} if m["name"] == target else m for m in members]


def _write(tmp_path: Path, data: bytes, name: str = "crafted.pt2") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _read(path: Path, member: str) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(member)


def _first_record(members: list[dict]) -> str:
    return next(
        m["name"] for m in members if "/data/" in m["name"] and m["name"].split("/")[-1].isdigit()
    )


# -- every entry point ---------------------------------------------------------------------------


def _entry_points(c: Case) -> dict:
    args, kwargs = c.inputs()
    return {
        "read_schema": pt2interp.read_schema,
        "state_dict": lambda p: pt2interp.read_program(p).state_dict(),
        "numpy": lambda p: pt2interp.extract_weights(p, backend="numpy"),
        "torch": pt2interp.extract_weights,
        "load": lambda p: pt2interp.load(p)(*args, **kwargs),
    }


WEIGHT_READERS = ("state_dict", "numpy", "torch", "load")
EVERY_ENTRY_POINT = ("read_schema", *WEIGHT_READERS)


def _check(path: Path, c: Case, error, *fragments, failing=EVERY_ENTRY_POINT) -> None:
    """The entry points in ``failing`` raise ``error`` naming every fragment; the others
    succeed or raise a Pt2Error."""
    for label, fn in _entry_points(c).items():
        if label not in failing:
            try:
                fn(path)
            except pt2interp.Pt2Error:
                pass
            continue
        with pytest.raises(error) as info:
            fn(path)
        for fragment in fragments:
            assert fragment in str(info.value), f"{label}: {fragment!r} not in: {info.value}"


def _cli_info(path: Path, *fragments) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pt2interp.cli", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pt2interp: error: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- encrypted members ---------------------------------------------------------------------------


@pytest.mark.parametrize("member", [PROGRAM, WEIGHT])
@pytest.mark.parametrize("where", ["both", "central", "local"])
def test_encrypted_members_are_refused_when_the_archive_is_opened(tmp_path, member, where):
    """zipfile raises RuntimeError for an encrypted member and ignores the local header's flag;
    a mapped weight record bypasses zipfile altogether."""
    central = 1 if where in ("both", "central") else 0
    local = {"flags": 1} if where in ("both", "local") else {"flags": 0}
    path = _write(
        tmp_path, _write_zip(_changed(_members_of(MLP.path), member, flags=central, local=local))
    )
    _check(path, MLP, pt2interp.FormatError, repr(member), "encrypted")
    _cli_info(path, repr(member), "encrypted")


# -- local headers that disagree with the central directory --------------------------------------


@pytest.mark.parametrize("member", [PROGRAM, WEIGHT])
@pytest.mark.parametrize(
    "field,value", [("method", zipfile.ZIP_DEFLATED), ("size", 4), ("crc", 0x12345678)]
)
def test_local_header_disagreeing_with_the_directory(tmp_path, member, field, value):
    path = _write(
        tmp_path, _write_zip(_changed(_members_of(MLP.path), member, local={field: value}))
    )
    _check(path, MLP, pt2interp.FormatError, repr(member), "local header")
    _cli_info(path, repr(member), "local header")


def _zip64_local(m: dict, size_delta: int = 0) -> dict:
    """The member with its local header's sizes in a zip64 extra field, as zipfile writes
    members over 4 GiB (and any it is told to)."""
    sizes = struct.pack("<HHQQ", 1, 16, m["size"] + size_delta, len(m["data"]))
    return {**m, "local": {"size": 0xFFFFFFFF, "csize": 0xFFFFFFFF, "extra": sizes}}


def test_zip64_local_headers_are_read(tmp_path):
    path = _write(tmp_path, _write_zip([_zip64_local(m) for m in _members_of(MLP.path)]))
    x = MLP.inputs()[0]
    assert torch.equal(pt2interp.load(path)(*x), pt2interp.load(MLP.path)(*x))
    assert set(pt2interp.extract_weights(path, backend="numpy")) == set(
        pt2interp.extract_weights(MLP.path)
    )
    members = [_zip64_local(m, 8) if m["name"] == WEIGHT else m for m in _members_of(MLP.path)]
    _check(
        _write(tmp_path, _write_zip(members), "liar.pt2"),
        MLP,
        pt2interp.FormatError,
        repr(WEIGHT),
        "local header 2056",
    )


def test_bytes_before_the_zip_are_refused(tmp_path):
    """zipfile shifts every offset by what precedes the zip; torch's reader does not."""
    path = _write(tmp_path, b"\0" * 64 + MLP.path.read_bytes())
    _check(path, MLP, pt2interp.FormatError, "crafted.pt2", "central directory")
    _cli_info(path, "central directory")


# -- weight integrity: CRC of mapped records -----------------------------------------------------


def _corrupt_record(tmp_path: Path) -> Path:
    data = bytearray(MLP.path.read_bytes())
    with zipfile.ZipFile(MLP.path) as z:
        info = z.getinfo(WEIGHT)
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    data[info.header_offset + 30 + name_len + extra_len + 1000] ^= 0x04  # one bit of fc1.weight
    return _write(tmp_path, bytes(data))


def test_corrupt_weight_record_fails_its_crc(tmp_path):
    """The record is mapped, not read through zipfile: its CRC-32 is checked when it is first
    mapped, on both backends. read_schema reads no weight bytes and still succeeds."""
    path = _corrupt_record(tmp_path)
    _check(path, MLP, pt2interp.FormatError, repr(WEIGHT), "CRC-32", failing=WEIGHT_READERS)
    pt2interp.read_schema(path)


def test_crc_check_can_be_turned_off(tmp_path):
    """``open_archive(path, verify=False)``: a caller who trusts the file skips the CRC pass."""
    path = _corrupt_record(tmp_path)
    archive = pt2interp.open_archive(path, verify=False)
    state = pt2interp.read_program(archive).state_dict()
    assert not torch.equal(
        state["fc1.weight"], pt2interp.read_program(MLP.path).state_dict()["fc1.weight"]
    )


# -- the zips nested in an archive ---------------------------------------------------------------


def _tensor_payload() -> bytes:
    buf = io.BytesIO()
    torch.save(torch.randn(32, 16), buf)
    return buf.getvalue()


def _use_pickle_archive(tmp_path: Path, payload: bytes) -> Path:
    """The zoo MLP with fc1.weight stored as a pickled tensor (``use_pickle``) in ``weight_0``."""
    doc = json.loads(_read(MLP.path, CONFIG))
    doc["config"]["fc1.weight"]["use_pickle"] = True
    members = _changed(_members_of(MLP.path), CONFIG, **_member(CONFIG, json.dumps(doc).encode()))
    return _write(
        tmp_path,
        _write_zip(_changed(members, WEIGHT, **_member(WEIGHT, payload))),
        "use_pickle.pt2",
    )


# (fixture, member holding the nested zip, its original payload)
NESTED = {
    "legacy": (LEGACY, LEGACY_STATE, lambda: _read(LEGACY.path, LEGACY_STATE)),
    "torch-2.8": (V28, V28_STATE, lambda: _read(V28.path, V28_STATE)),
    "use_pickle": (MLP, WEIGHT, _tensor_payload),
}


def _with_payload(tmp_path: Path, where: str, payload: bytes, name: str = "nested.pt2") -> Path:
    c, member, _ = NESTED[where]
    if where == "use_pickle":
        return _use_pickle_archive(tmp_path, payload)
    return _write(
        tmp_path,
        _write_zip(_changed(_members_of(c.path), member, **_member(member, payload))),
        name,
    )


def test_the_nested_archives_load_as_crafted(tmp_path):
    """The baseline: each nested payload, rewritten by the writer below, loads on every path."""
    for where, (c, _, original) in NESTED.items():
        path = _with_payload(tmp_path, where, _write_zip(_members_of(original())), f"{where}.pt2")
        for fn in _entry_points(c).values():
            fn(path)


def _nested_defects() -> dict:
    """name → (edit of the nested zip's members returning (members, write_zip kwargs),
    fragments)."""

    def duplicate(ms):
        record = _first_record(ms)
        twin = next(m for m in ms if m["name"] == record)
        return ms + [_member(record, bytes(len(twin["data"])))], {}

    def shared(ms):
        record = _first_record(ms)
        twin = next(m for m in ms if m["name"] == record)
        return ms + [{**twin, "name": record + "0", "share": record}], {}

    def encrypted(ms):
        return _changed(ms, _first_record(ms), flags=1, local={"flags": 1}), {}

    def local_crc(ms):
        return _changed(ms, _first_record(ms), local={"crc": 0x0BAD0BAD}), {}

    def bad_crc(ms):
        record = _first_record(ms)
        data = next(m["data"] for m in ms if m["name"] == record)
        flipped = bytes([data[0] ^ 1]) + data[1:]
        return _changed(ms, record, data=flipped, crc=zlib.crc32(data)), {}

    def prefixed(ms):
        return ms, {"prefix": b"\0" * 32}

    return {
        "duplicate record": (duplicate, ("duplicate member 'archive/data/0'",)),
        "shared local header": (
            shared,
            ("'archive/data/0' and 'archive/data/00' share the local header",),
        ),
        "encrypted record": (encrypted, ("encrypted",)),
        "local header CRC": (local_crc, ("local header",)),
        "record CRC": (bad_crc, ("CRC",)),
        "bytes before the zip": (prefixed, ("central directory",)),
    }


@pytest.mark.parametrize("defect", list(_nested_defects()))
@pytest.mark.parametrize("where", list(NESTED))
def test_nested_zips_get_the_archive_checks(tmp_path, where, defect):
    """Both backends refuse the same nested zips, naming the archive member (and the record)."""
    c, member, original = NESTED[where]
    edit, fragments = _nested_defects()[defect]
    members, kwargs = edit(_members_of(original()))
    path = _with_payload(tmp_path, where, _write_zip(members, **kwargs))
    _check(path, c, pt2interp.WeightError, member, *fragments, failing=WEIGHT_READERS)


# -- member count ------------------------------------------------------------------------------


def _many_members(count: int, *, declare: int | None = None) -> bytes:
    """``count`` central entries (all naming one empty local header's member), written fast."""
    names = [f"m/{i}" for i in range(count)]
    local = (
        _LOCAL.pack(0x04034B50, 20, 0, 0, 0, 0x21, 0, 0, 0, len(names[0]), 0) + names[0].encode()
    )
    central = b"".join(
        _CENTRAL.pack(0x02014B50, 20, 20, 0, 0, 0, 0x21, 0, 0, 0, len(n), 0, 0, 0, 0, 0, 0)
        + n.encode()
        for n in names
    )
    n = count if declare is None else declare
    end64 = len(local) + len(central)
    return (
        local
        + central
        + struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), len(local))
        + struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
        + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    )


@pytest.mark.parametrize("declare", [None, 3], ids=["declared", "end record lies"])
def test_too_many_members_are_refused_before_the_directory_is_parsed(
    tmp_path, monkeypatch, declare
):
    """A zip of a million members takes zipfile half a minute to parse: the count is read from
    the end record (or, where that lies, from the directory's bytes) and held to the budget."""
    budget = limits.current().max_archive_members
    path = _write(tmp_path, _many_members(budget + 1, declare=declare), "many.pt2")
    entry_points = _entry_points(MLP)

    def parsed(self):
        raise AssertionError("zipfile parsed the directory before the member count was checked")

    t0 = time.monotonic()
    with monkeypatch.context() as m:
        m.setattr(zipfile.ZipFile, "_RealGetContents", parsed)
        for label, fn in entry_points.items():
            with pytest.raises(pt2interp.LimitError) as info:
                fn(path)
            assert info.value.limit == "max_archive_members" and "many.pt2" in str(info.value), (
                label
            )
    assert time.monotonic() - t0 < 5
    _cli_info(path, "many.pt2", "max_archive_members")


def test_member_budget_can_be_raised(tmp_path):
    path = _write(tmp_path, _many_members(60), "many.pt2")
    with (
        limits.override(max_archive_members=59),
        pytest.raises(pt2interp.LimitError, match="60 members"),
    ):
        pt2interp.open_archive(path)
    with (
        limits.override(max_archive_members=60),
        pytest.raises(pt2interp.FormatError, match="share the local"),
    ):
        pt2interp.open_archive(path)  # read, and refused for what it is


def test_member_budget_applies_to_the_archive(tmp_path):
    with limits.override(max_archive_members=12):  # the zoo MLP has 13
        _check(MLP.path, MLP, pt2interp.LimitError, "13 members", "max_archive_members")


@pytest.mark.parametrize("where,extra,budget", [("legacy", 0, 6), ("torch-2.8", 5, 12)])
def test_member_budget_applies_to_nested_zips(tmp_path, where, extra, budget):
    c, member, original = NESTED[where]
    members = _members_of(original()) + [_member(f"archive/extra/{i}") for i in range(extra)]
    path = _with_payload(tmp_path, where, _write_zip(members))
    with limits.override(max_archive_members=budget):  # the outer zip fits, the nested one does not
        pt2interp.open_archive(path)
        _check(path, c, pt2interp.LimitError, member, "max_archive_members", failing=WEIGHT_READERS)


# -- views numpy and torch cannot make ----------------------------------------------------------


def test_zero_stride_view_of_huge_size(tmp_path):
    """A stride-0 view within its record but 2**62 elements: numpy raises ValueError making
    it, torch makes one whose nbytes wraps around. Refused on both paths, by name."""
    doc = json.loads(_read(MLP.path, CONFIG))
    meta = doc["config"]["fc1.weight"]["tensor_meta"]
    meta["sizes"], meta["strides"] = [{"as_int": 2**62}], [{"as_int": 0}]
    path = _write(
        tmp_path,
        _write_zip(
            _changed(_members_of(MLP.path), CONFIG, **_member(CONFIG, json.dumps(doc).encode()))
        ),
    )
    _check(path, MLP, pt2interp.WeightError, WEIGHT, "fc1.weight", "int64", failing=WEIGHT_READERS)


class _Storage:
    def __init__(self, key: str, numel: int, storage_type=torch.FloatStorage):
        self.key, self.numel, self.type = key, numel, storage_type


class _Tensor:
    """Pickles as torch does, with any geometry and metadata (the lazy conj bit)."""

    def __init__(self, storage: _Storage, size, stride, metadata=None):
        self.storage, self.size, self.stride, self.metadata = storage, size, stride, metadata

    def __reduce__(self):
        args = (self.storage, 0, self.size, self.stride, False, collections.OrderedDict())
        return torch._utils._rebuild_tensor_v2, args + ((self.metadata,) if self.metadata else ())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.type, obj.key, "cpu", obj.numel)
        return None


def _torch_save(state: dict, records: dict[str, dict]) -> bytes:
    """A torch.save zip of ``state`` (_Tensor values) with records ``{key: member kwargs}``."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(collections.OrderedDict(state))
    members = [
        _member("archive/data.pkl", buf.getvalue()),
        _member("archive/byteorder", b"little"),
        _member("archive/version", b"3\n"),
    ]
    members += [_member(f"archive/data/{key}", **kw) for key, kw in records.items()]
    return _write_zip(members)


def test_zero_stride_view_in_a_pickled_state_dict(tmp_path):
    c, member, _ = NESTED["legacy"]
    storage = _Storage("0", 512)
    payload = _torch_save(
        {"net.0.weight": _Tensor(storage, (2**62,), (0,))}, {"0": {"data": bytes(2048)}}
    )
    path = _with_payload(tmp_path, "legacy", payload)
    _check(path, c, pt2interp.WeightError, member, "net.0.weight", failing=WEIGHT_READERS)
    with pytest.raises(pt2interp.WeightError, match=r"tensor 'net\.0\.weight' on storage '0'"):
        load_torch_save(payload, source="state.pt")


# -- bombs, in a child with an address-space limit ----------------------------------------------

_CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy, torch
    import pt2interp
    from pt2interp.torch_pickle import load_torch_save

    cases = json.loads(sys.argv[1])
    headroom = int(sys.argv[2])
    calls = {
        "read_schema": pt2interp.read_schema,
        "state_dict": lambda p: pt2interp.read_program(p).state_dict(),
        "numpy": lambda p: pt2interp.extract_weights(p, backend="numpy"),
        "torch": pt2interp.extract_weights,
        "load": lambda p: pt2interp.load(p),
        "load_torch_save": lambda p: load_torch_save(open(p, "rb").read(), source=p),
    }
    torch.zeros(4) @ torch.zeros(4)  # start torch's threads before the limit is set
    pages = int(open("/proc/self/statm").read().split()[0])
    resource.setrlimit(
        resource.RLIMIT_AS, (pages * resource.getpagesize() + headroom, resource.RLIM_INFINITY)
    )
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = []
    for path, labels in cases:
        for label in labels:
            try:
                calls[label](path)
                outcome = "ok"
            except pt2interp.Pt2Error as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            except BaseException as exc:
                outcome = f"UNEXPECTED {type(exc).__name__}: {str(exc)[:300]}"
            out.append([path, label, outcome])
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    print(json.dumps({"outcomes": out, "rss_growth": growth}))
""")
HEADROOM = 1 << 30


def _run_bounded(cases: list[tuple[Path, tuple[str, ...]]]) -> tuple[list, int]:
    arg = json.dumps([[str(p), list(labels)] for p, labels in cases])
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, arg, str(HEADROOM)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    return result["outcomes"], result["rss_growth"]


def _shared_record_bomb() -> bytes:
    """A torch.save zip of 256 tensors of 8 MiB whose records are one deflated record: each
    entry inflates about 130:1 (under the ratio limit), all 256 to 2 GiB from 70 kB."""
    size, count = 8 << 20, 256
    body = bytearray(size)
    body[::512] = random.Random(0).randbytes(len(body[::512]))
    raw = zlib.compress(body, 6)[2:-4]
    assert 100 < size / len(raw) < pt2interp.archive.MAX_COMPRESSION_RATIO
    storages = [_Storage(str(i), size // 4) for i in range(count)]
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(
        collections.OrderedDict(
            (f"w{i}", _Tensor(s, (size // 4,), (1,))) for i, s in enumerate(storages)
        )
    )
    record = _member(
        "archive/data/0", raw, method=zipfile.ZIP_DEFLATED, size=size, crc=zlib.crc32(body)
    )
    members = [
        _member("archive/data.pkl", buf.getvalue()),
        _member("archive/byteorder", b"little"),
        _member("archive/version", b"3\n"),
        record,
    ]
    members += [
        {**record, "name": f"archive/data/{i}", "share": "archive/data/0"} for i in range(1, count)
    ]
    return _write_zip(members)


def _conj_bomb() -> bytes:
    """One complex64 element viewed 2**31 times (stride 0) with torch's lazy conj bit: numpy
    has no such bit, so the view would be copied: 16 GiB."""
    storage = _Storage("0", 1, torch.ComplexFloatStorage)
    state = {"c": _Tensor(storage, (2**31,), (0,), collections.OrderedDict(conj=True))}
    return _torch_save(state, {"0": {"data": bytes(8)}})


def test_bombs_are_refused_within_bounded_memory(tmp_path):
    bomb = _shared_record_bomb()
    assert len(bomb) < 200_000
    legacy = _with_payload(tmp_path, "legacy", bomb, "legacy_bomb.pt2")
    v28 = _with_payload(tmp_path, "torch-2.8", bomb, "v28_bomb.pt2")
    conj = _write(tmp_path, _conj_bomb(), "conj.pt")
    readers = ("state_dict", "numpy", "torch", "load")
    outcomes, rss_growth = _run_bounded(
        [(legacy, readers), (v28, readers), (conj, ("load_torch_save",))]
    )
    for path, label, outcome in outcomes:
        assert outcome.startswith("WeightError: "), f"{path} {label}: {outcome}"
        if path == str(conj):
            assert "tensor 'c'" in outcome and "copy" in outcome, outcome
        else:
            member = LEGACY_STATE if path == str(legacy) else V28_STATE
            assert member in outcome and (
                "zip bomb" in outcome or "share the local header" in outcome
            ), outcome
    assert rss_growth < 256 << 20, f"the child grew by {rss_growth} bytes"
