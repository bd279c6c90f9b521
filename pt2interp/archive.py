"""The ``.pt2`` container: zip layouts, members, and zero-copy access to stored entries.

Two layouts exist. The *PT2 archive* (torch 2.8+) keeps everything under one top folder:
``<top>/archive_format``, ``<top>/models/<name>.json``, weights under ``<top>/data/weights``.
The *legacy* layout (torch 2.1 to 2.7) has ``serialized_exported_program.json`` and pickled
state dicts at the zip root. An *AOTInductor package* holds compiled code and no graph.

Every member name is checked before use (no absolute or ``..`` paths, no duplicates), every
read is bounded by the member's declared size, and compressed members are refused when their
ratio or size is absurd. Stored (uncompressed) members can be memory-mapped straight from the
file with a private copy-on-write mapping, so weights cost no copy and the file is never
written.

>>> import pt2interp, importlib.resources as r
>>> arc = pt2interp.open_archive(r.files("pt2interp.examples") / "tiny_mlp.pt2")
>>> arc.layout, arc.model_names
('pt2', ['model'])
"""

from __future__ import annotations

import bisect
import io
import mmap
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pt2interp import versions
from pt2interp.errors import AOTInductorPackageError, FormatError

# A compressed member may inflate at most this many times its compressed size (zip bombs),
# and no JSON member may exceed this many bytes.
MAX_COMPRESSION_RATIO = 200
MAX_JSON_BYTES = 1 << 31

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_LOCAL_HEADER_SIG = 0x04034B50


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    compressed_size: int
    stored: bool
    header_offset: int
    crc: int


class Archive:
    """An opened ``.pt2`` file. Use :func:`open_archive`.

    Attributes: ``source`` (path or ``"<file object>"``), ``layout`` (``"pt2"`` or
    ``"legacy"``), ``top`` (the PT2 top folder, ``""`` for legacy), ``model_names``.
    """

    def __init__(self, source: str | os.PathLike | BinaryIO):
        self._mmap: mmap.mmap | None = None
        self._file = None
        if isinstance(source, (str, os.PathLike)):
            self.source = str(source)
            try:
                self._file = open(source, "rb")  # noqa: SIM115 (held open for the archive's life)
            except OSError as exc:
                raise FormatError(f"{self.source}: cannot open: {exc.strerror or exc}") from None
            fileobj: BinaryIO = self._file
        elif hasattr(source, "read") and hasattr(source, "seek"):
            self.source = getattr(source, "name", "<file object>")
            if not isinstance(self.source, str):
                self.source = "<file object>"
            fileobj = source
        elif isinstance(source, (bytes, bytearray, memoryview)):
            self.source = "<bytes>"
            fileobj = io.BytesIO(bytes(source))
        else:
            raise TypeError(f"expected a path or binary file object, got {type(source).__name__}")
        self._fileobj = fileobj
        try:
            self._zip = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
            self.close()
            raise FormatError(f"{self.source}: not a readable zip archive ({exc})") from None
        except Exception as exc:  # noqa: BLE001 (zipfile raises assorted errors on mangled directories)
            self.close()
            raise FormatError(f"{self.source}: corrupt zip archive ({type(exc).__name__}: {exc})") from None
        self.members: dict[str, Member] = {}
        for info in self._zip.infolist():
            name = info.filename
            _check_member_name(name, self.source)
            if name in self.members:
                raise FormatError(f"{self.source}: duplicate member {name!r}")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise FormatError(f"{self.source}: member {name!r} uses unsupported compression {info.compress_type}")
            if info.file_size < 0 or info.compress_size < 0:
                raise FormatError(f"{self.source}: member {name!r} has a negative size")
            if info.header_offset < 0:
                raise FormatError(f"{self.source}: member {name!r} has a negative header offset "
                                  f"{info.header_offset} (corrupt central directory)")
            self.members[name] = Member(name, info.file_size, info.compress_size,
                                        info.compress_type == zipfile.ZIP_STORED, info.header_offset, info.CRC)
        self._check_overlaps()
        self._detect_layout()

    def _check_overlaps(self) -> None:
        # Every member's local header must agree with the central directory, and its data must
        # end before the next local header (or the central directory): members sharing bytes are
        # a zip-bomb technique and the mark of a forged directory. One small read per member.
        starts = sorted({m.header_offset for m in self.members.values()})
        start_dir = getattr(self._zip, "start_dir", None)
        self._data_limit: dict[str, int] = {}
        self._data_start: dict[str, int] = {}
        for m in self.members.values():
            i = bisect.bisect_right(starts, m.header_offset)
            limit = starts[i] if i < len(starts) else None
            if start_dir is not None and start_dir > m.header_offset:
                limit = start_dir if limit is None else min(limit, start_dir)
            if limit is not None:
                self._data_limit[m.name] = limit
            self._data_start[m.name] = self._local_data_start(m)

    # -- layout ----------------------------------------------------------------------
    def _detect_layout(self) -> None:
        names = list(self.members)
        if versions.LEGACY_PROGRAM in self.members:
            self.layout, self.top = "legacy", ""
            self.model_names = [versions.LEGACY_MODEL_NAME]
            return
        tops = {n.split("/", 1)[0] for n in names if "/" in n}
        for top in sorted(tops):
            if f"{top}/{versions.LEGACY_PROGRAM}" in self.members:
                self.layout, self.top = "legacy", top
                self.model_names = [versions.LEGACY_MODEL_NAME]
                return
        for top in sorted(tops):
            prefix = f"{top}/{versions.PT2_MODELS_DIR}"
            models = sorted(n[len(prefix):-len(".json")] for n in names
                            if n.startswith(prefix) and n.endswith(".json") and "/" not in n[len(prefix):])
            if models:
                self.layout, self.top, self.model_names = "pt2", top, models
                return
        for top in sorted(tops):
            if any(n.startswith(f"{top}/{versions.PT2_AOTI_DIR}") for n in names):
                raise AOTInductorPackageError(
                    f"{self.source}: this is an AOTInductor package (compiled code under "
                    f"{top}/{versions.PT2_AOTI_DIR}), not an exported graph pt2interp can interpret. "
                    "Run it with torch._inductor.aoti_load_package(path) on a torch matching the one "
                    "that compiled it, or export the model again with torch.export.save.")
        if not names:
            raise FormatError(f"{self.source}: the zip archive is empty")
        raise FormatError(
            f"{self.source}: no exported program found: neither {versions.LEGACY_PROGRAM} (torch 2.1-2.7) "
            f"nor <top>/{versions.PT2_MODELS_DIR}<name>.json (torch 2.8+) is in the archive")

    def member_path(self, relative: str) -> str:
        """The full member name of a path relative to the layout's top folder."""
        return f"{self.top}/{relative}" if self.top else relative

    def has(self, relative: str) -> bool:
        return self.member_path(relative) in self.members

    def list(self, relative_dir: str) -> list[str]:
        """Members under a folder (relative to the top), as relative paths."""
        prefix = self.member_path(relative_dir)
        strip = len(self.top) + 1 if self.top else 0
        return [n[strip:] for n in self.members if n.startswith(prefix)]

    # -- reading ---------------------------------------------------------------------
    def info(self, relative: str) -> Member:
        name = self.member_path(relative)
        try:
            return self.members[name]
        except KeyError:
            raise FormatError(f"{self.source}: missing member {name!r}") from None

    def read(self, relative: str, *, limit: int | None = None) -> bytes:
        """The member's bytes, CRC-checked, refusing sizes over ``limit`` or absurd ratios."""
        m = self.info(relative)
        if limit is not None and m.size > limit:
            raise FormatError(f"{self.source}: member {m.name!r} declares {m.size} bytes, over the limit of {limit}")
        if not m.stored and m.size > max(m.compressed_size, 1) * MAX_COMPRESSION_RATIO:
            raise FormatError(f"{self.source}: member {m.name!r} would inflate {m.compressed_size} bytes to "
                              f"{m.size} (ratio over {MAX_COMPRESSION_RATIO}): refusing a likely zip bomb")
        try:
            with self._zip.open(m.name) as f:
                data = f.read(m.size + 1)
        except zipfile.BadZipFile as exc:
            raise FormatError(f"{self.source}: member {m.name!r} is corrupt ({exc})") from None
        except (OSError, EOFError, zlib.error, ValueError, struct.error, NotImplementedError) as exc:
            raise FormatError(f"{self.source}: member {m.name!r} cannot be read ({type(exc).__name__}: {exc})") from None
        if len(data) != m.size:
            raise FormatError(f"{self.source}: member {m.name!r} holds {len(data)} bytes, "
                              f"its header declares {m.size}")
        return data

    def read_text(self, relative: str, *, limit: int = MAX_JSON_BYTES) -> str:
        data = self.read(relative, limit=limit)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"{self.source}: member {self.member_path(relative)!r} is not UTF-8 text ({exc})") from None

    def buffer(self, relative: str) -> memoryview | bytes:
        """The member's bytes without a copy where possible (a copy-on-write file mapping).

        Writes to the returned buffer stay private to this process: the file is never
        changed. Compressed members and file objects fall back to :meth:`read`.
        """
        m = self.info(relative)
        if not m.stored or self._file is None or m.size == 0:
            return self.read(relative)
        start = self._data_offset(m)
        mm = self._mapping()
        if start + m.size > len(mm):
            raise FormatError(f"{self.source}: member {m.name!r} extends past the end of the file "
                              f"(truncated archive?)")
        return memoryview(mm)[start:start + m.size]

    def _mapping(self) -> mmap.mmap:
        if self._mmap is None:
            try:
                self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as exc:
                raise FormatError(f"{self.source}: cannot map the file ({exc})") from None
        return self._mmap

    def _data_offset(self, m: Member) -> int:
        return self._data_start[m.name]

    def _read_at(self, offset: int, size: int) -> bytes:
        if self._file is not None:
            return os.pread(self._file.fileno(), size, offset)  # one call, no buffer refill
        self._fileobj.seek(offset)
        return self._fileobj.read(size)

    def _local_data_start(self, m: Member) -> int:
        header = _LOCAL_HEADER.size
        try:
            # the header and, in the same read, the name as long as the directory has it
            raw = self._read_at(m.header_offset, header + len(m.name.encode("utf-8")))
            if len(raw) < header:
                raise FormatError(f"{self.source}: local header of {m.name!r} is truncated")
            fields = _LOCAL_HEADER.unpack_from(raw)
            if fields[0] != _LOCAL_HEADER_SIG:
                raise FormatError(f"{self.source}: bad local header signature for {m.name!r}")
            flags, local_csize, name_len, extra_len = fields[2], fields[7], fields[9], fields[10]
            local_name = raw[header:header + name_len]
            if len(local_name) != name_len:
                local_name = self._read_at(m.header_offset + header, name_len)
        except OSError as exc:
            raise FormatError(f"{self.source}: cannot read the local header of {m.name!r} ({exc})") from None
        # The local header must describe the same member as the central directory (zipfile checks
        # this on reads; mapped members bypass zipfile): same name, same size unless deferred.
        if local_name not in (m.name.encode("utf-8"), m.name.encode("cp437", "replace")):
            raise FormatError(f"{self.source}: the local header at offset {m.header_offset} names "
                              f"{local_name[:100]!r}, not {m.name!r} (corrupt central directory)")
        if not flags & 0x08 and local_csize not in (0xFFFFFFFF, m.compressed_size):
            raise FormatError(f"{self.source}: member {m.name!r}: the central directory declares "
                              f"{m.compressed_size} bytes, its local header {local_csize}")
        start = m.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        limit = self._data_limit.get(m.name)
        if limit is not None and start + m.compressed_size > limit:
            raise FormatError(f"{self.source}: member {m.name!r} declares {m.compressed_size} bytes, more than "
                              f"fit before the next member at offset {limit} (overlapping or corrupt entries)")
        return start

    def close(self) -> None:
        # The mapping stays valid for tensors that still view it; closing the file is enough.
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<Archive {self.source!r} layout={self.layout} models={self.model_names}>"


def _check_member_name(name: str, source: str) -> None:
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise FormatError(f"{source}: member {name!r} has an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise FormatError(f"{source}: member {name!r} escapes the archive with '..'")
    if "\x00" in name:
        raise FormatError(f"{source}: member name {name!r} contains a NUL byte")


def open_archive(source: str | os.PathLike | BinaryIO | bytes) -> Archive:
    """Open a ``.pt2`` file (path, binary file object or bytes) and detect its layout.

    Raises :class:`~pt2interp.errors.FormatError` for anything that is not a readable
    exported-program archive, :class:`~pt2interp.errors.AOTInductorPackageError` for
    compiled AOTInductor packages.
    """
    if isinstance(source, Path) or hasattr(source, "__fspath__"):
        source = os.fspath(source)
    elif not isinstance(source, (str, bytes, bytearray, memoryview)) and hasattr(source, "open") \
            and not hasattr(source, "read"):
        # importlib.resources Traversable
        with source.open("rb") as f:
            return Archive(io.BytesIO(f.read()))
    return Archive(source)
