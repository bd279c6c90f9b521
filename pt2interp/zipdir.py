"""Zip containers checked before anything reads them: the ``.pt2`` and the zips nested in it.

:class:`ZipDirectory` reads a zip's directory with every check a hostile file calls for. The
member count comes from the end record and is held to
``pt2interp.limits.current().max_archive_members`` before the directory is parsed; member
names must be safe (no absolute or ``..`` paths, no duplicates); encrypted members are
refused; every local header must agree with the central directory; no two members may share
bytes, and no bytes may come before the zip. Reads are bounded by each member's declared size
and CRC-checked, and compressed members are refused when their ratio is absurd. The same
checks serve the archive (:class:`pt2interp.archive.Archive`, errors are ``FormatError``) and
the ``torch.save`` payloads nested in it (``WeightError``).
"""

from __future__ import annotations

import bisect
import io
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from pt2interp import limits
from pt2interp.errors import FormatError, LimitError, Pt2Error

# A compressed member may inflate at most this many times its compressed size (zip bombs),
# and no JSON member may exceed this many bytes.
MAX_COMPRESSION_RATIO = 200
MAX_JSON_BYTES = 1 << 31

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_LOCAL_HEADER_SIG = 0x04034B50
_CENTRAL_HEADER_SIG = b"PK\x01\x02"
_CENTRAL_HEADER_SIZE = 46
_END = struct.Struct("<IHHHHIIH")  # end of central directory record
_END_SIG = b"PK\x05\x06"
_END64_LOCATOR = struct.Struct("<IIQI")
_END64_LOCATOR_SIG = 0x07064B50
_END64 = struct.Struct("<IQHHIIQQQQ")
_END64_SIG = 0x06064B50
_ZIP64_EXTRA_ID = 0x0001
_ZIP64_MARK = 0xFFFFFFFF
_FLAG_ENCRYPTED = 0x01
_FLAG_DATA_DESCRIPTOR = 0x08
_CRC_CHUNK = 16 << 20


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    compressed_size: int
    stored: bool
    header_offset: int
    crc: int


@dataclass(frozen=True)
class _EndRecord:
    entries: int  # as the end record (or the zip64 one) declares them
    directory_offset: int  # where it says the central directory starts
    directory_size: int
    directory_start: int  # where the central directory is: just before the end record(s)


class ZipDirectory:
    """The central directory of one zip, checked against the bytes it describes.

    Used for the ``.pt2`` file and for the ``torch.save`` zips nested in it (the legacy state
    dicts, torch 2.8's ``model.pt``, ``use_pickle`` entries), which ``torch.load`` reads with
    its own zip reader: whatever could make the two readers see different bytes, or make
    either inflate without bound, is refused before any member is read. Failures raise
    ``error`` (a :class:`~pt2interp.errors.Pt2Error` subclass) naming ``source`` and the
    member; too many members raise :class:`~pt2interp.errors.LimitError`.

    ``read_in_full``: every member will be read (``torch.load`` reads a whole payload), so
    every member's compression ratio, and their total, is checked now rather than on read.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        source: str,
        *,
        error: type[Pt2Error] = FormatError,
        not_a_zip: str = "not a readable zip archive",
        read_in_full: bool = False,
    ):
        self.source, self._error, self._fileobj = source, error, fileobj
        self._fd = _file_descriptor(fileobj)
        try:
            self.size = fileobj.seek(0, io.SEEK_END)
            end = _end_record(self._read_at, self.size)
        except OSError as exc:
            raise error(f"{source}: cannot read the zip ({exc})") from None
        if end is not None:
            self._check_member_count(end)
        try:
            self.zip = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
            raise error(f"{source}: {not_a_zip} ({exc})") from None
        except Exception as exc:  # noqa: BLE001 (zipfile raises assorted errors on mangled directories)
            raise error(f"{source}: corrupt zip archive ({type(exc).__name__}: {exc})") from None
        try:
            self._check_directory(end, read_in_full)
        except BaseException:
            self.zip.close()
            raise

    # -- the directory ---------------------------------------------------------------------
    def _check_directory(self, end: _EndRecord | None, read_in_full: bool) -> None:
        if end is not None and self.zip.start_dir != end.directory_offset:
            # zipfile shifts every offset by the difference, torch's reader does not: the two
            # would read different bytes for the same member
            raise self._error(
                f"{self.source}: the end record places the central directory at offset "
                f"{end.directory_offset} but it lies at {self.zip.start_dir} "
                "(bytes before the zip, or a corrupt end record)"
            )
        if self.zip.filelist and self._read_at(0, 4) != _LOCAL_HEADER_SIG.to_bytes(4, "little"):
            # torch.load takes a payload that does not start with a local header for a raw pickle
            raise self._error(f"{self.source}: the zip does not start with a member's local header")
        self.members: dict[str, Member] = {}
        for info in self.zip.infolist():
            self.members[info.filename] = self._check_entry(info, read_in_full)
        budget = limits.current().max_archive_members
        if len(self.members) > budget:  # an end record zipfile read differently from _end_record
            raise LimitError(
                f"{self.source}: the zip holds {len(self.members)} members, more than the "
                f"{budget} an archive may have",
                limit="max_archive_members",
            )
        if read_in_full:
            self._check_total_size()
        self._data_start = self._locate_data()

    def _check_member_count(self, end: _EndRecord) -> None:
        budget = limits.current().max_archive_members
        if end.entries > budget:
            raise LimitError(
                f"{self.source}: the zip declares {end.entries} members, more than the "
                f"{budget} an archive may have",
                limit="max_archive_members",
            )
        # zipfile parses every header the directory's size holds, whatever the count says
        if (
            end.directory_size > budget * _CENTRAL_HEADER_SIZE
            and self._count_central_headers(end, budget) > budget
        ):
            raise LimitError(
                f"{self.source}: the zip's central directory holds more than {budget} members "
                f"(its end record declares {end.entries})",
                limit="max_archive_members",
            )

    def _count_central_headers(self, end: _EndRecord, budget: int) -> int:
        """Header signatures in the central directory (an upper bound on its entries), read in
        chunks and counted no further than past ``budget``."""
        pos = max(end.directory_start, 0)
        stop = min(pos + end.directory_size, self.size)
        count, carry = 0, b""
        while pos < stop and count <= budget:
            chunk = self._read_at(pos, min(1 << 20, stop - pos))
            if not chunk:
                break
            count += (carry + chunk).count(_CENTRAL_HEADER_SIG)  # carry is too short to hold one
            carry, pos = chunk[-(len(_CENTRAL_HEADER_SIG) - 1) :], pos + len(chunk)
        return count

    def _check_entry(self, info: zipfile.ZipInfo, read_in_full: bool) -> Member:
        name, source, error = info.filename, self.source, self._error
        _check_member_name(name, source, error)
        if name in self.members:
            raise error(f"{source}: duplicate member {name!r}")
        if info.flag_bits & _FLAG_ENCRYPTED:
            raise error(f"{source}: member {name!r} is encrypted; encrypted members are not read")
        if info.file_size < 0 or info.compress_size < 0:
            raise error(f"{source}: member {name!r} has a negative size")
        if info.header_offset < 0:
            raise error(
                f"{source}: member {name!r} has a negative header offset "
                f"{info.header_offset} (corrupt central directory)"
            )
        member = Member(
            name,
            info.file_size,
            info.compress_size,
            info.compress_type == zipfile.ZIP_STORED,
            info.header_offset,
            info.CRC,
        )
        if read_in_full:  # first: a bomb is reported as one, whatever its compression method
            self.check_ratio(member)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise error(
                f"{source}: member {name!r} uses unsupported compression {info.compress_type}"
            )
        if member.stored and member.size != member.compressed_size:
            raise error(
                f"{source}: member {name!r} is stored uncompressed but its sizes differ "
                f"({member.compressed_size} stored, {member.size} declared)"
            )
        return member

    def _check_total_size(self) -> None:
        # Members that do not overlap cannot together exceed this, but the check costs nothing
        # and does not depend on the overlap checks being complete.
        total = sum(m.size for m in self.members.values())
        if total > max(self.size, 1) * MAX_COMPRESSION_RATIO:
            raise self._error(
                f"{self.source}: its members would inflate to {total} bytes in all, over "
                f"{MAX_COMPRESSION_RATIO} times the zip's {self.size} bytes: refusing "
                "a likely zip bomb"
            )

    def _locate_data(self) -> dict[str, int]:
        """Where each member's data starts, once its local header agrees with the directory.

        Each member's data must end before the next local header (or the central directory):
        members sharing bytes are a zip-bomb technique and the mark of a forged directory.
        One small read per member."""
        owner: dict[int, str] = {}
        for m in self.members.values():
            other = owner.setdefault(m.header_offset, m.name)
            if other != m.name:
                raise self._error(
                    f"{self.source}: members {other!r} and {m.name!r} share the local "
                    f"header at offset {m.header_offset} (overlapping entries)"
                )
        starts = sorted(owner)
        start_dir = self.zip.start_dir
        data_start = {}
        for m in self.members.values():
            if m.header_offset + _LOCAL_HEADER.size > start_dir:
                raise self._error(
                    f"{self.source}: member {m.name!r} has its local header at offset "
                    f"{m.header_offset}, not before the central directory at {start_dir}"
                )
            i = bisect.bisect_right(starts, m.header_offset)
            limit = min(starts[i], start_dir) if i < len(starts) else start_dir
            start = self._check_local_header(m)
            if start + m.compressed_size > limit:
                raise self._error(
                    f"{self.source}: member {m.name!r} declares {m.compressed_size} bytes, "
                    f"more than fit before the next member at offset {limit} "
                    "(overlapping or corrupt entries)"
                )
            data_start[m.name] = start
        return data_start

    def _check_local_header(self, m: Member) -> int:
        """The offset of the member's data, once its local header is found to describe the same
        member as the central directory. zipfile compares only the name, and reads of mapped
        members bypass zipfile; torch's reader takes the data from the local header's end."""
        header, source, error = _LOCAL_HEADER.size, self.source, self._error
        try:
            # the header and, in the same read, the name as long as the directory has it
            raw = self._read_at(m.header_offset, header + len(m.name.encode("utf-8")))
            if len(raw) < header:
                raise error(f"{source}: local header of {m.name!r} is truncated")
            sig, _, flags, method, _, _, crc, csize, size, name_len, extra_len = (
                _LOCAL_HEADER.unpack_from(raw)
            )
            if sig != _LOCAL_HEADER_SIG:
                raise error(f"{source}: bad local header signature for {m.name!r}")
            local_name = raw[header : header + name_len]
            if len(local_name) != name_len:
                local_name = self._read_at(m.header_offset + header, name_len)
            if _ZIP64_MARK in (csize, size) and not flags & _FLAG_DATA_DESCRIPTOR:
                extra = self._read_at(m.header_offset + header + name_len, extra_len)
                size, csize = _zip64_local_sizes(extra, size, csize)
        except OSError as exc:
            raise error(f"{source}: cannot read the local header of {m.name!r} ({exc})") from None
        if local_name not in (m.name.encode("utf-8"), m.name.encode("cp437", "replace")):
            raise error(
                f"{source}: the local header at offset {m.header_offset} names "
                f"{local_name[:100]!r}, not {m.name!r} (corrupt central directory)"
            )
        if flags & _FLAG_ENCRYPTED:
            raise error(
                f"{source}: member {m.name!r} is encrypted (so its local header says); "
                "encrypted members are not read"
            )
        central_method = zipfile.ZIP_STORED if m.stored else zipfile.ZIP_DEFLATED
        disagreements = [("compression method", central_method, method)]
        if not flags & _FLAG_DATA_DESCRIPTOR:  # otherwise the local fields are zeros
            disagreements += [
                ("compressed size", m.compressed_size, csize),
                ("size", m.size, size),
                ("CRC-32", m.crc, crc),
            ]
        for field, central, local in disagreements:
            if central != local:
                raise error(
                    f"{source}: member {m.name!r}: the central directory declares {field} "
                    f"{central}, its local header {local} (corrupt or forged entry)"
                )
        return m.header_offset + header + name_len + extra_len

    # -- reading ---------------------------------------------------------------------------
    def data_start(self, m: Member) -> int:
        """File offset of the member's stored bytes."""
        return self._data_start[m.name]

    def check_ratio(self, m: Member) -> None:
        if not m.stored and m.size > max(m.compressed_size, 1) * MAX_COMPRESSION_RATIO:
            raise self._error(
                f"{self.source}: member {m.name!r} would inflate {m.compressed_size} bytes "
                f"to {m.size} (ratio over {MAX_COMPRESSION_RATIO}): refusing a likely "
                "zip bomb (compression bomb)"
            )

    def read(self, name: str, *, limit: int | None = None) -> bytes:
        """The member's bytes, CRC-checked, refusing sizes over ``limit`` or absurd ratios."""
        m, source, error = self.members[name], self.source, self._error
        if limit is not None and m.size > limit:
            raise error(
                f"{source}: member {m.name!r} declares {m.size} bytes, over the limit of {limit}"
            )
        self.check_ratio(m)
        try:
            with self.zip.open(m.name) as f:
                data = f.read(m.size + 1)
        except zipfile.BadZipFile as exc:
            raise error(f"{source}: member {m.name!r} is corrupt ({exc})") from None
        except (
            OSError,
            EOFError,
            zlib.error,
            ValueError,
            struct.error,
            NotImplementedError,
        ) as exc:
            raise error(
                f"{source}: member {m.name!r} cannot be read ({type(exc).__name__}: {exc})"
            ) from None
        if len(data) != m.size:
            raise error(
                f"{source}: member {m.name!r} holds {len(data)} bytes, its header declares {m.size}"
            )
        return data

    def check_crc(self, m: Member, data) -> None:
        """Refuse ``data`` (the member's bytes, read without zipfile) unless its CRC-32 matches."""
        self._compare_crc(m, zlib.crc32(data))

    def check_all_crcs(self) -> None:
        """Verify every member's CRC-32, for readers that check none (``torch.load``)."""
        for m in self.members.values():
            if not m.stored:
                self.read(m.name)  # inflated (within the ratio) and checked by zipfile
                continue
            crc, start = 0, self._data_start[m.name]
            for pos in range(start, start + m.size, _CRC_CHUNK):
                crc = zlib.crc32(self._read_at(pos, min(_CRC_CHUNK, start + m.size - pos)), crc)
            self._compare_crc(m, crc)

    def _compare_crc(self, m: Member, crc: int) -> None:
        if crc != m.crc:
            raise self._error(
                f"{self.source}: member {m.name!r} is corrupt: its bytes have CRC-32 "
                f"{crc:08x}, the directory declares {m.crc:08x}"
            )

    def _read_at(self, offset: int, size: int) -> bytes:
        if self._fd is not None:
            return os.pread(self._fd, size, offset)  # one call, no buffer refill
        self._fileobj.seek(offset)
        return self._fileobj.read(size)


def _file_descriptor(fileobj: BinaryIO) -> int | None:
    try:
        return fileobj.fileno() if isinstance(fileobj, io.BufferedReader) else None
    except (OSError, ValueError):
        return None


def _end_record(read_at: Callable[[int, int], bytes], size: int) -> _EndRecord | None:
    """The end-of-central-directory record (and the zip64 one), found where zipfile finds
    them: the last 22 bytes, or else the last signature in the last 64 KiB."""
    tail_start = max(size - _END.size - (1 << 16), 0)
    tail = read_at(tail_start, size - tail_start)
    pos = len(tail) - _END.size
    if pos < 0 or tail[pos : pos + 4] != _END_SIG or tail[-2:] != b"\0\0":
        pos = tail.rfind(_END_SIG)
        if pos < 0 or pos + _END.size > len(tail):
            return None
    _, _, _, _, entries, directory_size, directory_offset, _ = _END.unpack_from(tail, pos)
    location = tail_start + pos
    # zip64: a locator just before the end record, the zip64 record just before the locator
    record = location - _END64_LOCATOR.size - _END64.size
    if record >= 0:
        raw = read_at(record, _END64.size + _END64_LOCATOR.size)
        if (
            len(raw) == _END64.size + _END64_LOCATOR.size
            and _END64_LOCATOR.unpack_from(raw, _END64.size)[0] == _END64_LOCATOR_SIG
        ):
            fields = _END64.unpack_from(raw)
            if fields[0] == _END64_SIG:
                entries, directory_size, directory_offset = fields[7], fields[8], fields[9]
                location = record
    return _EndRecord(entries, directory_offset, directory_size, location - directory_size)


def _zip64_local_sizes(extra: bytes, size: int, csize: int) -> tuple[int, int]:
    """The sizes a local header marks 0xFFFFFFFF, from its zip64 extra field (in that order)."""
    pos = 0
    while pos + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, pos)
        if kind == _ZIP64_EXTRA_ID:
            count = min(length, len(extra) - pos - 4) // 8
            values = list(struct.unpack_from(f"<{count}Q", extra, pos + 4))
            if size == _ZIP64_MARK and values:
                size = values.pop(0)
            if csize == _ZIP64_MARK and values:
                csize = values.pop(0)
            break
        pos += 4 + length
    return size, csize


def _check_member_name(name: str, source: str, error: type[Pt2Error] = FormatError) -> None:
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise error(f"{source}: member {name!r} has an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise error(f"{source}: member {name!r} escapes the archive with '..'")
    if "\x00" in name:
        raise error(f"{source}: member name {name!r} contains a NUL byte")
