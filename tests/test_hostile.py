"""Issue: a ``.pt2`` is a file from the internet.

Reading, introspecting or running one must never execute its contents, never hang, never
exhaust memory, and always fail with the project's own error naming the problem. One test (or
parametrized family) per item of the issue; each asserts the error type and that the message
names the culprit: the archive member, the JSON path, the node or the refused global.
"""

from __future__ import annotations

import functools
import io
import json
import os
import resource
import struct
import subprocess
import sys
import time
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from fixture_cases import case
from helpers import member_named, rewrite_zip

import pt2interp
from pt2interp import jsontext
from pt2interp.torch_pickle import load_torch_save

MLP = case("zoo", "mlp").path
COND = case("zoo", "cond").path
LEGACY = case("torch-2.5.1", "mlp").path
PROGRAM = member_named(MLP, "models/model.json")
CONFIG = member_named(MLP, "model_weights_config.json")
TOP = PROGRAM.split("/")[0]


def x_input() -> torch.Tensor:
    return torch.randn(4, 16)


def _everything(path) -> None:
    """What a user can do with an archive: introspect it, read its weights, load and run it."""
    if hasattr(pt2interp, "read_schema"):
        pt2interp.read_schema(path)
    pt2interp.read_program(path).state_dict()
    pt2interp.load(path)(x_input())


def _raises(exc_type, path, *fragments, fn=_everything) -> pt2interp.Pt2Error:
    with pytest.raises(exc_type) as info:
        fn(path)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in the message: {msg}"
    return info.value


def _read_json(src: Path, member: str):
    with zipfile.ZipFile(src) as z:
        return json.loads(z.read(member))


def _edit_json(src: Path, dst: Path, member: str, edit, text=None) -> Path:
    doc = _read_json(src, member)
    edit(doc)
    data = json.dumps(doc)
    if text is not None:
        data = text(data)
    return rewrite_zip(src, dst, replace={member: data.encode()})


def _edit_program(tmp_path: Path, edit, src: Path = MLP, name: str = "edited.pt2", **kw) -> Path:
    member = member_named(src, "models/model.json")
    return _edit_json(src, tmp_path / name, member, edit, **kw)


def _nodes(doc) -> list:
    return doc["graph_module"]["graph"]["nodes"]


# ------------------------------------------------------------------------------------------------
# Pickles: only weights_only loading or the restricted unpickler; other callables are refused.
# ------------------------------------------------------------------------------------------------


class _Call:
    """Pickles as ``fn(*args)``: unpickling it *is* the call."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _attacks(marker: Path) -> dict[str, tuple[_Call, tuple[str, ...]]]:
    """name → (payload object, strings the refusal names)."""
    return {
        "exec": (_Call(exec, f"open({str(marker)!r}, 'w').write('pwned')"), ("exec",)),
        "os.system": (_Call(os.system, f"touch {marker}"), (f"{os.system.__module__}.system",)),
        "eval": (_Call(eval, f"open({str(marker)!r}, 'w').write('pwned')"), ("eval",)),
    }


def _evil_state_dict(obj) -> bytes:
    buf = io.BytesIO()
    torch.save({"fc1.weight": torch.ones(32, 16), "evil": obj}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("attack", ["exec", "os.system", "eval"])
def test_malicious_pickle_is_live(tmp_path, attack):
    """The payloads below really run when unpickled without restrictions."""
    marker = tmp_path / "pwned"
    obj, _ = _attacks(marker)[attack]
    torch.load(io.BytesIO(_evil_state_dict(obj)), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("attack", ["exec", "os.system", "eval"])
@pytest.mark.parametrize("member", ["serialized_state_dict.pt", "serialized_constants.pt"])
def test_malicious_legacy_pickle_is_refused(tmp_path, attack, member):
    marker = tmp_path / "pwned"
    obj, names = _attacks(marker)[attack]
    payload = _evil_state_dict(obj)
    path = rewrite_zip(LEGACY, tmp_path / "evil.pt2", replace={member: payload})
    for fn in (lambda p: pt2interp.read_program(p).state_dict(), lambda p: pt2interp.load(p)):
        _raises(pt2interp.WeightError, path, member, "weights_only", *names, fn=fn)
        assert not marker.exists()
    # the torch-free restricted unpickler refuses the same payload, naming the global
    with pytest.raises(pt2interp.WeightError, match="refusing to unpickle global") as e:
        load_torch_save(payload, source=member)
    assert any(n in str(e.value) for n in names)
    assert not marker.exists()


def test_malicious_example_inputs_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    obj, _ = _attacks(marker)["exec"]
    path = rewrite_zip(
        LEGACY,
        tmp_path / "evil.pt2",
        replace={"serialized_example_inputs.pt": _evil_state_dict(obj)},
    )
    prog = pt2interp.read_program(path)
    with pytest.raises(pt2interp.WeightError, match="serialized_example_inputs.pt.*exec"):
        prog.example_inputs()
    assert not marker.exists()


@pytest.mark.parametrize("attack", ["exec", "os.system"])
def test_malicious_torch_2_8_pickled_weights_are_refused(tmp_path, attack):
    """torch 2.8 kept the weights as one pickled ``data/weights/model.pt``."""
    marker = tmp_path / "pwned"
    obj, names = _attacks(marker)[attack]
    with zipfile.ZipFile(MLP) as z:
        drop = {n: None for n in z.namelist() if n.startswith(f"{TOP}/data/weights/")}
    member = f"{TOP}/data/weights/model.pt"
    path = rewrite_zip(MLP, tmp_path / "v28.pt2", replace=drop, add={member: _evil_state_dict(obj)})
    _raises(
        pt2interp.WeightError,
        path,
        member,
        *names,
        fn=lambda p: pt2interp.read_program(p).state_dict(),
    )
    _raises(pt2interp.WeightError, path, member, *names, fn=pt2interp.load)
    assert not marker.exists()


def test_raw_pickle_payloads_are_refused(tmp_path):
    """torch's pre-1.6 raw-pickle format allocates storages of pickled sizes before reading
    them; no .pt2 writer ever used it, so it is refused before torch sees it."""
    buf = io.BytesIO()
    torch.save({"fc1.weight": torch.ones(2)}, buf, _use_new_zipfile_serialization=False)
    path = rewrite_zip(
        LEGACY, tmp_path / "raw.pt2", replace={"serialized_state_dict.pt": buf.getvalue()}
    )
    _raises(
        pt2interp.WeightError,
        path,
        "serialized_state_dict.pt",
        "not a torch.save zip",
        fn=lambda p: pt2interp.read_program(p).state_dict(),
    )


# ------------------------------------------------------------------------------------------------
# Zip problems
# ------------------------------------------------------------------------------------------------


def test_not_a_zip_and_empty_files(tmp_path):
    for name, data in (
        ("text.pt2", b"just text\n" * 50),
        ("empty.pt2", b""),
        ("pk.pt2", b"PK\x03\x04" + b"\0" * 40),
    ):
        p = tmp_path / name
        p.write_bytes(data)
        _raises(pt2interp.FormatError, p, name)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_anywhere(tmp_path, fraction):
    data = MLP.read_bytes()
    p = tmp_path / "cut.pt2"
    p.write_bytes(data[: int(len(data) * fraction)])
    _raises(pt2interp.FormatError, p, "cut.pt2")


@pytest.mark.parametrize(
    "name",
    [
        "../evil",
        "mlp/../../evil",
        "/abs/evil",
        "\\abs\\evil",
        "C:/evil",
        "mlp/..\\..\\evil",
        "mlp/data/weights/../../../evil",
    ],
)
def test_unsafe_member_names_are_refused_and_never_written(tmp_path, monkeypatch, name):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    path = rewrite_zip(MLP, work / "unsafe.pt2", add={name: b"payload"})
    with zipfile.ZipFile(path) as z:
        assert name in z.namelist()
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.chdir(work)
    _raises(pt2interp.FormatError, path, "unsafe.pt2", repr(name))
    assert sorted(tmp_path.rglob("*")) == before, "something was written"
    assert not Path("/abs/evil").exists()


def test_duplicate_member_names(tmp_path):
    path = tmp_path / "dup.pt2"
    with zipfile.ZipFile(MLP) as zin, zipfile.ZipFile(path, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate but writes it
        for info in zin.infolist():
            zout.writestr(info, zin.read(info.filename))
        zout.writestr(PROGRAM, b'{"schema_version": {"major": 8, "minor": 0}}')
    _raises(pt2interp.FormatError, path, "duplicate member", PROGRAM)


def _data_span(data: bytes, member: str) -> tuple[int, int]:
    """Where a member's stored bytes lie in the file."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(member)
    h = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[h + 26 : h + 30])
    start = h + 30 + name_len + extra_len
    return start, start + info.compress_size


@pytest.mark.parametrize(
    "src,member",
    [
        (MLP, PROGRAM),
        (MLP, CONFIG),
        (LEGACY, "serialized_state_dict.pt"),
        (LEGACY, "serialized_exported_program.json"),
    ],
)
def test_crc_mismatch_names_the_member(tmp_path, src, member):
    data = bytearray(src.read_bytes())
    start, end = _data_span(bytes(data), member)
    data[(start + end) // 2] ^= 0x20  # a flipped bit in the middle of the member's data
    path = tmp_path / "crc.pt2"
    path.write_bytes(bytes(data))
    err = _raises(
        (pt2interp.FormatError, pt2interp.WeightError),
        path,
        member,
        fn=lambda p: pt2interp.load(p)(x_input()) if src == MLP else pt2interp.load(p),
    )
    assert "CRC" in str(err) or "corrupt" in str(err)


def _central_header(data: bytes, member: str) -> int:
    """Offset of a member's central directory header."""
    pos = data.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack("<II", data[pos + 12 : pos + 20])
    i = cd_offset
    while i < cd_offset + cd_size:
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[i + 28 : i + 34])
        if data[i + 46 : i + 46 + name_len].decode() == member:
            return i
        i += 46 + name_len + extra_len + comment_len
    raise LookupError(member)


def _claim_size(data: bytes, member: str, size: int, local_too: bool) -> bytes:
    b = bytearray(data)
    c = _central_header(data, member)
    b[c + 20 : c + 28] = struct.pack("<II", size, size)
    if local_too:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            h = z.getinfo(member).header_offset
        b[h + 18 : h + 26] = struct.pack("<II", size, size)
    return bytes(b)


@pytest.mark.parametrize(
    "member_suffix", ["weight_0", "models/model.json", "byteorder", ".data/serialization_id"]
)
@pytest.mark.parametrize("local_too", [False, True])
def test_member_data_shorter_than_declared(tmp_path, member_suffix, local_too):
    """The directory says a member holds more bytes than lie before the next one (or the end).

    Mapped weight records bypass zipfile, so the reader checks the extent itself."""
    data = MLP.read_bytes()
    member = member_named(MLP, member_suffix)
    start, end = _data_span(data, member)
    path = tmp_path / "long.pt2"
    path.write_bytes(_claim_size(data, member, end - start + 64, local_too))
    _raises(pt2interp.FormatError, path, member)


# -- zip bombs ------------------------------------------------------------------------------------

BOMB_BYTES = 1 << 30  # 1 GiB of zeros ...


@functools.cache
def _bomb() -> tuple[bytes, int]:
    """(raw deflate stream, CRC) of BOMB_BYTES zeros: about 1 MB. After a full flush deflate
    restarts, so one compressed MiB of zeros repeats verbatim."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    mib = bytes(1 << 20)
    piece = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    raw = piece * (BOMB_BYTES >> 20) + c.flush()
    crc = 0
    for _ in range(BOMB_BYTES >> 20):
        crc = zlib.crc32(mib, crc)
    return raw, crc


def _zip_with_raw(entries: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip of (name, stored bytes, method, crc, uncompressed size) entries, written by hand."""
    out, central = bytearray(), bytearray()
    for name, raw, method, crc, size in entries:
        nb = name.encode()
        offset = len(out)
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(raw), size, len(nb), 0
        )
        out += nb + raw
        central += (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                method,
                0,
                0x21,
                crc,
                len(raw),
                size,
                len(nb),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + nb
        )
    cd_offset = len(out)
    out += central + struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), cd_offset, 0
    )
    return bytes(out)


def _with_member(src: Path, member: str, raw: bytes, method: int, crc: int, size: int) -> bytes:
    entries = []
    with zipfile.ZipFile(src) as z:
        for info in z.infolist():
            if info.filename == member:
                entries.append((member, raw, method, crc, size))
            else:
                entries.append(
                    (
                        info.filename,
                        z.read(info.filename),
                        zipfile.ZIP_STORED,
                        info.CRC,
                        info.file_size,
                    )
                )
    return _zip_with_raw(entries)


def test_the_bomb_is_real():
    """The bomb below inflates to its declared 1 GiB (checked in 1 MiB steps, never held)."""
    raw, crc = _bomb()
    assert len(raw) < 2 << 20
    d, total, check = zlib.decompressobj(-15), 0, 0
    data = raw
    while data:
        chunk = d.decompress(data, 1 << 20)
        total += len(chunk)
        check = zlib.crc32(chunk, check)
        data = d.unconsumed_tail
    assert total == BOMB_BYTES and check == crc


def _peak_memory(fn) -> tuple[int, int]:
    """(tracemalloc peak, growth of the process's peak RSS), in bytes, while fn runs."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0


@pytest.mark.parametrize(
    "member_suffix,error,message",
    [
        ("models/model.json", pt2interp.FormatError, "zip bomb"),
        ("model_weights_config.json", pt2interp.FormatError, "zip bomb"),
        ("weight_0", pt2interp.WeightError, "need only 2048"),  # the tensor bound comes first
    ],
)
def test_zip_bomb_is_refused_before_inflating(tmp_path, member_suffix, error, message):
    raw, crc = _bomb()
    member = member_named(MLP, member_suffix)
    path = tmp_path / "bomb.pt2"
    path.write_bytes(_with_member(MLP, member, raw, zipfile.ZIP_DEFLATED, crc, BOMB_BYTES))

    def attempt():
        _raises(error, path, member, message)
        if member_suffix == "weight_0":  # and the ratio check, where no tensor bound applies
            with pytest.raises(pt2interp.FormatError, match="zip bomb"):
                pt2interp.open_archive(path).read(member.split("/", 1)[1])

    t0 = time.monotonic()
    peak, rss_growth = _peak_memory(attempt)
    assert time.monotonic() - t0 < 10
    assert peak < 64 << 20, f"{peak} bytes allocated while refusing a bomb"
    assert rss_growth < 256 << 20


@pytest.mark.parametrize("member_suffix", ["models/model.json", "weight_0"])
def test_member_inflating_past_its_declared_size(tmp_path, member_suffix):
    """The bomb's stream under a modest declared size (no absurd ratio): inflation stops at the
    declared size and the CRC check refuses the member; memory stays at the declared size."""
    raw, crc = _bomb()
    member = member_named(MLP, member_suffix)
    declared = 2048 if member_suffix == "weight_0" else 4 << 20
    path = tmp_path / "liar.pt2"
    path.write_bytes(_with_member(MLP, member, raw, zipfile.ZIP_DEFLATED, crc, declared))
    peak, rss_growth = _peak_memory(lambda: _raises(pt2interp.FormatError, path, member, "corrupt"))
    assert peak < 64 << 20 and rss_growth < 256 << 20


def test_zip_bomb_inside_a_pickled_state_dict_is_refused(tmp_path):
    """Legacy archives nest a torch.save zip; torch would inflate a bomb inside it."""
    raw, crc = _bomb()
    with zipfile.ZipFile(LEGACY) as z:
        inner = z.read("serialized_state_dict.pt")
    with zipfile.ZipFile(io.BytesIO(inner)) as z:
        record = next(n for n in z.namelist() if "/data/" in n and not n.endswith(".pkl"))
        entries = [
            (i.filename, z.read(i.filename), zipfile.ZIP_STORED, i.CRC, i.file_size)
            for i in z.infolist()
            if i.filename != record
        ]
    entries.append((record, raw, zipfile.ZIP_DEFLATED, crc, BOMB_BYTES))
    path = rewrite_zip(
        LEGACY,
        tmp_path / "nested.pt2",
        replace={"serialized_state_dict.pt": _zip_with_raw(entries)},
    )
    peak, rss_growth = _peak_memory(
        lambda: _raises(
            pt2interp.WeightError,
            path,
            "serialized_state_dict.pt",
            record,
            "zip bomb",
            fn=lambda p: pt2interp.read_program(p).state_dict(),
        )
    )
    assert peak < 64 << 20 and rss_growth < 256 << 20


def test_compressed_weight_larger_than_its_tensors_is_refused(tmp_path):
    """Within the ratio limit, a compressed record still may not inflate beyond what the tensors
    declared on it need: the bound is proportional to the declared tensor sizes."""
    member = member_named(MLP, "weight_0")  # fc1.weight: 32 x 16 float32, 2048 bytes
    size = 64 << 20
    body = bytearray(size)
    body[::128] = os.urandom(size // 128)  # one random byte in 128: deflates about 40:1
    raw = zlib.compress(body, 1)[2:-4]
    assert size / len(raw) < pt2interp.archive.MAX_COMPRESSION_RATIO  # not a ratio bomb
    path = tmp_path / "big.pt2"
    path.write_bytes(_with_member(MLP, member, raw, zipfile.ZIP_DEFLATED, zlib.crc32(body), size))
    del body
    peak, _ = _peak_memory(
        lambda: _raises(
            pt2interp.WeightError,
            path,
            member,
            "fc1.weight",
            "need only 2048",
            fn=lambda p: pt2interp.read_program(p).state_dict(),
        )
    )
    assert peak < 32 << 20


def test_honestly_compressed_archives_still_load(tmp_path):
    path = rewrite_zip(MLP, tmp_path / "deflated.pt2", compress=True)
    with zipfile.ZipFile(path) as z:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    x = x_input()
    assert torch.equal(pt2interp.load(path)(x), pt2interp.load(MLP)(x))


# ------------------------------------------------------------------------------------------------
# JSON problems
# ------------------------------------------------------------------------------------------------


def _sweep_cases(doc):
    """(path, replacement) pairs: every value of the document replaced by one of a wrong type."""
    stack = [((), doc)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, dict):
            items = list(v.items())
        elif isinstance(v, list):
            items = list(enumerate(v))
        else:
            continue
        for k, x in items:
            wrong = {
                dict: [],
                list: {},
                str: 7,
                int: "7",
                bool: "yes",
                float: [],
                type(None): {"x": 1},
            }[type(x)]
            yield path + (k,), wrong
            stack.append((path + (k,), x))


def _set(doc, path, value):
    for p in path[:-1]:
        doc = doc[p]
    if value is _DELETE:
        del doc[path[-1]]
    else:
        doc[path[-1]] = value


_DELETE = object()


@pytest.mark.parametrize("src", [MLP, COND, LEGACY], ids=["zoo-mlp", "zoo-cond", "legacy-mlp"])
def test_wrong_types_and_missing_fields_at_every_path(src):
    """Every value of the program replaced by a wrongly typed one, and every key deleted: each
    archive loads and runs, or fails with a Pt2Error; a SchemaError names a JSON path."""
    member = (
        member_named(src, "models/model.json")
        if src != LEGACY
        else "serialized_exported_program.json"
    )
    doc = _read_json(src, member)
    with zipfile.ZipFile(src) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    x = case("zoo", "cond").inputs()[0][0] if src == COND else x_input()
    if src == LEGACY:
        x = case("torch-2.5.1", "mlp").inputs()[0][0]
    cases = [(p, w) for p, w in _sweep_cases(doc)] + [(p, _DELETE) for p, _ in _sweep_cases(doc)]
    outcomes: dict[str, int] = {}
    for path, value in cases:
        edited = json.loads(json.dumps(doc))
        _set(edited, path, value)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in members.items():
                z.writestr(name, json.dumps(edited) if name == member else data)
        try:
            prog = pt2interp.load(buf.getvalue())
            prog(x)
            outcome = "ok"
        except pt2interp.Pt2Error as exc:
            outcome = type(exc).__name__
            if isinstance(exc, pt2interp.SchemaError) and exc.path is None:
                assert "model" in str(exc) or member in str(exc), f"{path}: {exc}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("SchemaError", 0) > len(cases) // 4, outcomes


def _config_edit(tmp_path: Path, edit) -> Path:
    return _edit_json(MLP, tmp_path / "cfg.pt2", CONFIG, edit)


def _meta(doc, fqn="fc1.weight"):
    return doc["config"][fqn]["tensor_meta"]


@pytest.mark.parametrize(
    "field,index,value,message",
    [
        ("sizes", 0, 2**64, "size 18446744073709551616 does not fit in int64"),
        ("strides", 1, 2**63, "does not fit in int64"),
        ("sizes", 1, -1, "negative size -1"),
        ("strides", 0, -16, "negative stride -16"),
        ("storage_offset", None, -1, "storage offset -1"),
    ],
)
def test_impossible_geometry_in_the_weights_config(tmp_path, field, index, value, message):
    def edit(doc):
        if index is None:
            _meta(doc)[field] = {"as_int": value}
        else:
            _meta(doc)[field][index] = {"as_int": value}

    path = _config_edit(tmp_path, edit)
    suffix = f"[{index}]" if index is not None else ""
    _raises(
        pt2interp.SchemaError,
        path,
        CONFIG,
        f"config.fc1.weight.tensor_meta.{field}{suffix}",
        message,
        fn=lambda p: pt2interp.read_program(p).state_dict(),
    )


_PAST_END = "record holds only 2048"


@pytest.mark.parametrize(
    "sizes,strides,offset,message",
    [
        ([2**62, 1], [1, 1], 0, _PAST_END),  # a huge int within int64
        ([2**62, 16], [16, 1], 0, "do not fit in int64"),  # 2**66 elements
        ([2**40], [1], 0, _PAST_END),  # four terabytes of float32
        ([2**31, 2**31], [2**31, 1], 0, _PAST_END),
        ([32, 16], [16, 1], 2**40, _PAST_END),  # storage offset past the end
        ([32, 16], [16, 1], 1, _PAST_END),  # one element past the end
        ([32, 16], [17, 1], 0, _PAST_END),  # strides reaching past the end
    ],
)
def test_weights_declaring_more_than_the_record_holds(tmp_path, sizes, strides, offset, message):
    """Refused from the metadata, before anything is allocated."""

    def edit(doc):
        m = _meta(doc)
        m["sizes"] = [{"as_int": s} for s in sizes]
        m["strides"] = [{"as_int": s} for s in strides]
        m["storage_offset"] = {"as_int": offset}

    path = _config_edit(tmp_path, edit)
    member = member_named(MLP, "weight_0")

    def attempt():
        _raises(
            pt2interp.WeightError,
            path,
            member,
            "fc1.weight",
            message,
            fn=lambda p: pt2interp.read_program(p).state_dict(),
        )

    t0 = time.monotonic()
    peak, rss_growth = _peak_memory(attempt)
    assert time.monotonic() - t0 < 2
    assert peak < 16 << 20 and rss_growth < 64 << 20
    _raises(pt2interp.WeightError, path, member, "fc1.weight", fn=pt2interp.load)


def test_empty_record_with_huge_sizes_is_refused_before_allocating(tmp_path):
    """Empty records load as zeros (torch writes them for fake tensors): capped."""
    member = member_named(MLP, "weight_0")
    src = _config_edit(
        tmp_path,
        lambda d: _meta(d).update(
            sizes=[{"as_int": 2**20}, {"as_int": 2**20}], strides=[{"as_int": 2**20}, {"as_int": 1}]
        ),
    )
    path = rewrite_zip(src, tmp_path / "empty.pt2", replace={member: b""})
    peak, rss_growth = _peak_memory(
        lambda: _raises(
            pt2interp.WeightError,
            path,
            member,
            "fc1.weight",
            "bytes of zeros",
            fn=lambda p: pt2interp.read_program(p).state_dict(),
        )
    )
    assert peak < 16 << 20 and rss_growth < 64 << 20


def test_huge_input_size_in_the_program(tmp_path):
    """A size of 2**62 in the program's own metadata loads, and inputs are checked against it."""

    def edit(doc):
        doc["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0] = {"as_int": 2**62}

    path = _edit_program(tmp_path, edit)
    prog = pt2interp.load(path)
    with pytest.raises(
        pt2interp.InputMismatchError, match=f"input 'x' dim 0: expected {2**62}, got 4"
    ):
        prog(x_input())


@pytest.mark.parametrize("where", ["tensor_values", "input_sizes"])
def test_negative_sizes_in_the_program(tmp_path, where):
    def edit(doc):
        tv = doc["graph_module"]["graph"]["tensor_values"]
        name = "linear" if where == "tensor_values" else "x"
        tv[name]["strides" if where == "tensor_values" else "sizes"][0] = {"as_int": -3}

    path = _edit_program(tmp_path, edit)
    name = "linear" if where == "tensor_values" else "x"
    _raises(
        pt2interp.SchemaError,
        path,
        PROGRAM,
        f"graph_module.graph.tensor_values.{name}.",
        "negative",
    )


@pytest.mark.parametrize("where", ["metadata", "argument", "weights_config"])
# 1_000 parses on Python 3.12+ and not on 3.11; MAX_DEPTH + 1 parses on both: the limit is ours
@pytest.mark.parametrize("depth", [100_000, 5_000, 1_000, jsontext.MAX_DEPTH + 1])
def test_deeply_nested_json(tmp_path, where, depth):
    nested = "[" * depth + "]" * depth
    if where == "metadata":
        path = _edit_program(
            tmp_path,
            lambda d: _nodes(d)[0]["metadata"].__setitem__("stack_trace", "@@"),
            text=lambda t: t.replace('"@@"', nested),
        )
        _raises(pt2interp.SchemaError, path, PROGRAM, "nested too deeply")
    elif where == "argument":
        path = _edit_program(
            tmp_path,
            lambda d: _nodes(d)[1]["inputs"][0].__setitem__("arg", {"as_ints": "@@"}),
            text=lambda t: t.replace('"@@"', nested),
        )
        _raises(pt2interp.SchemaError, path, PROGRAM, "nested too deeply")
    else:
        path = _edit_json(
            MLP,
            tmp_path / "cfg.pt2",
            CONFIG,
            lambda d: _meta(d).__setitem__("sizes", "@@"),
            text=lambda t: t.replace('"@@"', nested),
        )
        _raises(
            pt2interp.Pt2Error, path, CONFIG, fn=lambda p: pt2interp.read_program(p).state_dict()
        )


def test_nested_arguments_within_the_json_limit(tmp_path):
    """Deep but parseable nesting: string_to_argument chains, deep tree specs, deep expressions."""
    arg = {"as_int": 1}
    for _ in range(150):  # two JSON levels each: within jsontext.MAX_DEPTH
        arg = {"as_string_to_argument": {"k": arg}}
    path = _edit_program(
        tmp_path, lambda d: _nodes(d)[1]["inputs"].append({"name": "deep", "arg": arg})
    )
    _raises(
        pt2interp.SchemaError,
        path,
        PROGRAM,
        "graph_module.graph.nodes[1].inputs[1].arg",
        "nested too deeply",
    )

    spec = {"type": None, "context": None, "children_spec": []}
    for _ in range(250):
        spec = {"type": "builtins.tuple", "context": "null", "children_spec": [spec]}

    def deep_spec(d):
        d["graph_module"]["module_call_graph"][0]["signature"]["out_spec"] = json.dumps([1, spec])

    path = _edit_program(tmp_path, deep_spec)
    _raises(pt2interp.SchemaError, path, PROGRAM, "out_spec", "nested too deeply")

    def deep_expr(d):
        d["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0] = {
            "as_expr": {"expr_str": "Integer(" * 400 + "1" + ")" * 400, "hint": 4}
        }

    path = _edit_program(tmp_path, deep_expr)
    _raises(pt2interp.SchemaError, path, PROGRAM, "tensor_values.x.sizes[0]", "nested too deeply")


@pytest.mark.parametrize(
    "expr,error",
    [
        (
            "Pow(s0, s0)",
            pt2interp.InputMismatchError,
        ),  # 4**4 for the input; 10**15**10**15 at the range's top
        ("Pow(Integer(10), Pow(Integer(10), Integer(15)))", pt2interp.SchemaError),
        ("FloorDiv(s0, Add(s0, Integer(-4)))", pt2interp.SchemaError),
    ],
)
def test_symbolic_sizes_that_cannot_be_evaluated(tmp_path, expr, error):
    """A dimension like 10**(10**15) would take forever and all memory: refused instead."""

    def edit(d):
        tv = d["graph_module"]["graph"]["tensor_values"]
        tv["x"]["sizes"][1] = {"as_expr": {"expr_str": expr, "hint": 16}}
        tv["x"]["sizes"][0] = {"as_expr": {"expr_str": "s0", "hint": 4}}
        d["range_constraints"] = {"s0": {"min_val": 2, "max_val": 10**15}}

    path = _edit_program(tmp_path, edit)
    t0 = time.monotonic()
    if hasattr(pt2interp, "read_schema"):
        try:
            pt2interp.read_schema(path)
        except pt2interp.Pt2Error:
            pass
    with pytest.raises(error, match="too large to evaluate|divides by zero|expected s0"):
        pt2interp.load(path)(x_input())
    assert time.monotonic() - t0 < 5


# ------------------------------------------------------------------------------------------------
# Graph problems
# ------------------------------------------------------------------------------------------------


def test_node_input_naming_an_undefined_value(tmp_path):
    path = _edit_program(
        tmp_path, lambda d: _nodes(d)[1]["inputs"][0]["arg"]["as_tensor"].update(name="ghost")
    )
    _raises(
        pt2interp.GraphError,
        path,
        "graph.nodes[1] (relu, torch.ops.aten.relu.default)",
        "input 'self'",
        "'ghost'",
        "no input or earlier node defines",
    )


@pytest.mark.parametrize("reads", ["own output", "later node"])
def test_cycles(tmp_path, reads):
    def edit(d):
        nodes = _nodes(d)
        if reads == "own output":
            nodes[1]["inputs"][0]["arg"]["as_tensor"]["name"] = "relu"  # relu(relu)
        else:
            nodes[0]["inputs"][0]["arg"]["as_tensor"]["name"] = (
                "linear_1"  # linear reads the last node
            )

    path = _edit_program(tmp_path, edit)
    node = "graph.nodes[1] (relu," if reads == "own output" else "graph.nodes[0] (linear,"
    _raises(pt2interp.GraphError, path, node, "earlier node")


def test_graph_output_naming_nothing(tmp_path):
    def edit(d):
        d["graph_module"]["graph"]["outputs"][0]["as_tensor"]["name"] = "nowhere"
        d["graph_module"]["signature"]["output_specs"][0]["user_output"]["arg"]["as_tensor"][
            "name"
        ] = "nowhere"

    path = _edit_program(tmp_path, edit)
    _raises(pt2interp.GraphError, path, "graph.outputs[0]", "'nowhere'", "nothing defines")


def test_value_defined_twice(tmp_path):
    path = _edit_program(
        tmp_path, lambda d: _nodes(d)[2]["outputs"][0]["as_tensor"].update(name="relu")
    )
    _raises(pt2interp.GraphError, path, "'relu'", "defined twice")


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.eval",
        "builtins.exec",
        "torch.load",
        "torch.ops.aten.__class__",
        "torch.ops.import_module.x",
        "torch.ops.load_library.x",
        "torch.ops.aten.definitely_not_an_op.default",
        "torch.ops.aten.relu.__call__",
        "torch.ops.aten.relu.__init__.x",
        "__import__('os').system('touch pwned')",
        "torch.ops.aten.relu.default.x.y",
        "subprocess.Popen",
        "_operator.__import__",
        "torch.ops.higher_order.nope",
    ],
)
def test_targets_outside_torch_ops_are_refused(tmp_path, target, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.chdir(tmp_path)

    def edit(d):
        node = _nodes(d)[1]
        node["target"] = target
        node["inputs"] = [{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}]

    path = _edit_program(tmp_path, edit)
    prog = pt2interp.read_program(path)  # reading only records the string
    assert prog.graph.nodes[1].target == target
    _raises(
        pt2interp.UnsupportedOpError,
        path,
        "graph.nodes[1] (relu)",
        repr(target)[:30],
        fn=pt2interp.load,
    )
    assert not marker.exists()
    assert not (tmp_path / "pwned").exists()


def test_file_system_ops_are_refused(tmp_path):
    """aten.from_file maps a file the graph names; with shared=True an in-place op then writes
    the user's file. Real torch.ops, so refused by name."""
    victim = tmp_path / "victim.txt"
    victim.write_text("original contents")
    live = torch.ops.aten.from_file.default(str(victim), True, 8, dtype=torch.uint8)
    live.add_(1)  # the attack works on torch itself ...
    del live
    assert victim.read_text() != "original contents"
    victim.write_text("original contents")

    def edit(d):
        nodes = _nodes(d)
        nodes[1]["target"] = "torch.ops.aten.from_file.default"
        nodes[1]["inputs"] = [
            {"name": "filename", "arg": {"as_string": str(victim)}},
            {"name": "shared", "arg": {"as_bool": True}},
            {"name": "size", "arg": {"as_int": 8}},
        ]
        nodes.insert(
            2,
            {
                "target": "torch.ops.aten.add_.Scalar",
                "inputs": [
                    {"name": "self", "arg": {"as_tensor": {"name": "relu"}}},
                    {"name": "other", "arg": {"as_int": 1}},
                ],
                "outputs": [{"as_tensor": {"name": "written"}}],
                "metadata": {},
            },
        )

    path = _edit_program(tmp_path, edit)
    _raises(
        pt2interp.UnsupportedOpError,
        path,
        "graph.nodes[1]",
        "from_file",
        "reads a file",
        fn=pt2interp.load,
    )
    assert victim.read_text() == "original contents"  # ... and never through pt2interp


@pytest.mark.parametrize(
    "target,args",
    [
        ("torch.ops.aten._reshape_alias.default", [{"as_ints": [1 << 20]}, {"as_ints": [1]}]),
        (
            "torch.ops.inductor._reinterpret_tensor.default",
            [{"as_ints": [4]}, {"as_ints": [1]}, {"as_int": 1 << 20}],
        ),
        (
            "torch.ops.inductor._alloc_from_pool.default",
            [{"as_int": 1 << 20}, {"as_scalar_type": 7}, {"as_ints": [4]}, {"as_ints": [1]}],
        ),
    ],
)
def test_unchecked_view_ops_are_refused(tmp_path, target, args):
    """Views torch builds without a bounds check: reading one reads memory outside the tensor."""

    def edit(d):
        node = _nodes(d)[1]
        node["target"] = target
        node["inputs"] = node["inputs"][:1] + [{"name": "", "arg": a} for a in args]

    path = _edit_program(tmp_path, edit)
    _raises(
        pt2interp.UnsupportedOpError,
        path,
        "graph.nodes[1]",
        target,
        "without checking its bounds",
        fn=pt2interp.load,
    )


@pytest.mark.parametrize(
    "op,a,b", [("pow", 10, 10**9), ("lshift", 1, 10**12), ("mul", 2**200, 2**200)]
)
def test_python_operator_bombs_on_sizes(tmp_path, op, a, b):
    """Sym-int arithmetic runs Python operators: 10 ** 10 ** 9 would run for minutes."""

    def edit(d):
        _nodes(d).append(
            {
                "target": f"_operator.{op}",
                "inputs": [{"name": "", "arg": {"as_int": a}}, {"name": "", "arg": {"as_int": b}}],
                "outputs": [{"as_sym_int": {"as_name": "huge"}}],
                "metadata": {},
            }
        )

    path = _edit_program(tmp_path, edit)
    t0 = time.monotonic()
    _raises(
        pt2interp.ExecutionError,
        path,
        "graph.nodes[3]",
        f"_operator.{op}",
        "too large",
        fn=lambda p: pt2interp.load(p)(x_input()),
    )
    assert time.monotonic() - t0 < 5


def test_operator_arguments_outside_torch_ops_are_refused(tmp_path):
    path = _edit_program(
        tmp_path,
        lambda d: _nodes(d)[1]["inputs"].append(
            {"name": "fn", "arg": {"as_operator": "os.system"}}
        ),
    )
    _raises(
        pt2interp.UnsupportedOpError, path, "nodes[1].inputs[1]", "os.system", fn=pt2interp.load
    )


@pytest.mark.parametrize(
    "where,make",
    [
        (
            "graph_module.graph.nodes[1].inputs[0].arg",
            lambda d: _nodes(d)[1]["inputs"][0].update(arg={"as_evil": 1}),
        ),
        (
            "graph_module.graph.nodes[1].outputs[0]",
            lambda d: _nodes(d)[1].update(outputs=[{"as_evil": "x"}]),
        ),
        (
            "graph_module.graph.outputs[0]",
            lambda d: d["graph_module"]["graph"]["outputs"].__setitem__(0, {"as_evil": 1}),
        ),
        (
            "graph_module.graph.inputs[0]",
            lambda d: d["graph_module"]["graph"]["inputs"].__setitem__(0, {"as_evil": 1}),
        ),
        (
            "graph_module.signature.input_specs[0]",
            lambda d: d["graph_module"]["signature"]["input_specs"].__setitem__(
                0, {"evil_input": {}}
            ),
        ),
        (
            "graph_module.graph.nodes[1].inputs[0].arg",
            lambda d: _nodes(d)[1]["inputs"][0].update(
                arg={"as_tensor": {"name": "x"}, "as_int": 3}
            ),
        ),
    ],
)
def test_unknown_argument_kinds(tmp_path, where, make):
    path = _edit_program(tmp_path, make)
    err = _raises(pt2interp.SchemaError, path, PROGRAM, where)
    assert "evil" in str(err) or "exactly one field" in str(err)


def test_argument_kind_the_interpreter_cannot_store(tmp_path):
    """A node output of a kind that parses (ints) but cannot name a value."""
    path = _edit_program(tmp_path, lambda d: _nodes(d)[1].update(outputs=[{"as_ints": [1, 2]}]))
    _raises((pt2interp.SchemaError, pt2interp.GraphError), path, "nodes[1]", fn=pt2interp.load)


def _cond_node(d):
    return next(n for n in _nodes(d) if n["target"] == "torch.ops.higher_order.cond")


@pytest.mark.parametrize(
    "change,error,fragments",
    [
        ("missing", pt2interp.GraphError, ("input 2 must be a subgraph, got nothing",)),
        (
            "not a graph",
            pt2interp.GraphError,
            ("input 1 must be a subgraph, got a string argument",),
        ),
        ("none", pt2interp.GraphError, ("input 2 must be a subgraph, got a none argument",)),
        (
            "no nodes",
            pt2interp.SchemaError,
            ("inputs[1].arg.as_graph.graph.nodes", "missing required field"),
        ),
        (
            "graph not an object",
            pt2interp.SchemaError,
            ("inputs[1].arg.as_graph.graph", "expected an object"),
        ),
        ("dangling subgraph output", pt2interp.GraphError, ("outputs[0] names 'gone'",)),
        ("undefined inside", pt2interp.GraphError, ("inputs[1].graph.nodes[0]", "'phantom'")),
    ],
)
def test_cond_with_a_malformed_or_missing_subgraph(tmp_path, change, error, fragments):
    def edit(d):
        node = _cond_node(d)
        g = node["inputs"][1]["arg"]["as_graph"]
        if change == "missing":
            del node["inputs"][2]
            del node["inputs"][2]
        elif change == "not a graph":
            node["inputs"][1]["arg"] = {"as_string": "true_graph_0"}
        elif change == "none":
            node["inputs"][2]["arg"] = {"as_none": True}
        elif change == "no nodes":
            del g["graph"]["nodes"]
        elif change == "graph not an object":
            g["graph"] = "true_graph_0"
        elif change == "dangling subgraph output":
            g["graph"]["outputs"][0] = {"as_tensor": {"name": "gone"}}
        else:
            g["graph"]["nodes"][0]["inputs"][0]["arg"] = {"as_tensor": {"name": "phantom"}}

    path = _edit_program(tmp_path, edit, src=COND)
    x = case("zoo", "cond").inputs()[0][0]
    with pytest.raises(error) as e:
        pt2interp.load(path)(x)
    for f in fragments:
        assert f in str(e.value), str(e.value)
    assert "cond" in str(e.value) or "inputs[1]" in str(e.value)


def test_kernel_failures_at_run_time_name_the_node(tmp_path):
    """A graph that is consistent but does not fit its own shapes fails in a kernel: the error
    is an ExecutionError naming the node, its target and torch's message."""
    path = _edit_program(
        tmp_path,
        lambda d: _nodes(d)[2]["inputs"][1]["arg"]["as_tensor"].update(name="p_fc1_weight"),
    )
    err = _raises(
        pt2interp.ExecutionError,
        path,
        "graph.nodes[2] (linear_1, torch.ops.aten.linear.default)",
        "RuntimeError",
        fn=lambda p: pt2interp.load(p)(x_input()),
    )
    assert isinstance(err.__cause__, RuntimeError)
    # the debugging path names it the same way
    with pytest.raises(pt2interp.ExecutionError, match=r"nodes\[2\] \(linear_1"):
        pt2interp.load(path).run(x_input(), on_node=lambda *a: None)


def test_signature_and_graph_disagree(tmp_path):
    def edit(d):
        d["graph_module"]["signature"]["output_specs"].append(
            d["graph_module"]["signature"]["output_specs"][0]
        )

    path = _edit_program(tmp_path, edit)
    _raises(
        pt2interp.SchemaError,
        path,
        "output_specs",
        "2 outputs but the graph has 1",
        fn=pt2interp.load,
    )


# ------------------------------------------------------------------------------------------------
# Errors: one hierarchy; the CLI prints one line and exits 1, a traceback only with --debug
# ------------------------------------------------------------------------------------------------


def test_one_hierarchy():
    for cls in (
        pt2interp.FormatError,
        pt2interp.SchemaError,
        pt2interp.WeightError,
        pt2interp.UnsupportedOpError,
        pt2interp.InputMismatchError,
        pt2interp.GraphError,
        pt2interp.ExecutionError,
        pt2interp.AOTInductorPackageError,
    ):
        assert issubclass(cls, pt2interp.Pt2Error)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pt2interp.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _bad_archives(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    not_zip = tmp_path / "bad.pt2"
    not_zip.write_bytes(b"not a zip")
    hostile = _edit_program(
        tmp_path, lambda d: _nodes(d)[1].update(target="os.system"), name="hostile.pt2"
    )
    newline = _edit_program(
        tmp_path, lambda d: _set_arg(d, {"as_x\nsecond line": 1}), name="newline.pt2"
    )
    kernel = _edit_program(
        tmp_path,
        lambda d: _nodes(d)[2]["inputs"][1]["arg"]["as_tensor"].update(name="p_fc1_weight"),
        name="kernel.pt2",
    )
    return {
        "format": (not_zip, "not a readable zip"),
        "unsupported": (hostile, "os.system"),
        "newline": (newline, "second line"),
        "execution": (kernel, "linear_1"),
    }


def _set_arg(doc, arg):
    _nodes(doc)[1]["inputs"][0]["arg"] = arg
    return doc


@pytest.mark.parametrize("which", ["format", "unsupported", "newline", "execution"])
def test_cli_prints_one_line_and_exits_1(tmp_path, which):
    path, fragment = _bad_archives(tmp_path)[which]
    r = _cli("run", str(path), "--random")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pt2interp: error: "), r.stderr
    assert fragment in lines[0]

    debug = _cli("--debug", "run", str(path), "--random")
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr and fragment in debug.stderr


def test_cli_info_on_a_bad_archive(tmp_path):
    path, _ = _bad_archives(tmp_path)["format"]
    r = _cli("info", str(path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("pt2interp: error: ") and "bad.pt2" in r.stderr
