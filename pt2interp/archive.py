"""The ``.pt2`` container: zip layouts, members, and zero-copy access to stored entries.

Two layouts exist. The *PT2 archive* (torch 2.8+) keeps everything under one top folder:
``<top>/archive_format``, ``<top>/models/<name>.json``, weights under ``<top>/data/weights``.
The *legacy* layout (torch 2.1 to 2.7) has ``serialized_exported_program.json`` and pickled
state dicts at the zip root. An *AOTInductor package* holds compiled code and no graph.

Every zip is checked by :class:`pt2interp.zipdir.ZipDirectory` before anything reads it: the
``.pt2`` itself and the ``torch.save`` zips nested in it alike. Its member count is read from
the end record and held to ``pt2interp.limits.current().max_archive_members`` before the
directory is parsed; member names must be safe (no absolute or ``..`` paths, no duplicates);
encrypted members are refused; every local header must agree with the central directory, and no
two members may share bytes. Every read is bounded by the member's declared size and
CRC-checked, and compressed members are refused when their ratio is absurd. Stored
(uncompressed) members can be memory-mapped straight from the file with a private copy-on-write
mapping, so weights cost no copy and the file is never written; their CRC is verified the first
time they are mapped.

>>> import pt2interp, importlib.resources as r
>>> arc = pt2interp.open_archive(r.files("pt2interp.examples") / "tiny_mlp.pt2")
>>> arc.layout, arc.model_names
('pt2', ['model'])
"""

from __future__ import annotations

import io
import mmap
import os
from pathlib import Path
from typing import BinaryIO

from pt2interp.errors import AOTInductorPackageError, FormatError
from pt2interp.zipdir import MAX_COMPRESSION_RATIO, MAX_JSON_BYTES, Member, ZipDirectory  # noqa: F401 (re-exported)

# Member names, below the archive's top folder (PT2 layout, torch 2.8+) or at its root (legacy).
PT2_MODELS_DIR = "models/"
PT2_WEIGHTS_DIR = "data/weights/"
PT2_CONSTANTS_DIR = "data/constants/"
PT2_SAMPLE_INPUTS_DIR = "data/sample_inputs/"
PT2_AOTI_DIR = "data/aotinductor/"
PT2_WEIGHTS_CONFIG = "data/weights/{}_weights_config.json"
PT2_CONSTANTS_CONFIG = "data/constants/{}_constants_config.json"
PT2_PICKLED_WEIGHTS = "data/weights/{}.pt"  # torch 2.8
PT2_PICKLED_CONSTANTS = "data/constants/{}.pt"  # torch 2.8

LEGACY_PROGRAM = "serialized_exported_program.json"
LEGACY_STATE_DICT = ("serialized_state_dict.pt", "serialized_state_dict.json")
LEGACY_CONSTANTS = ("serialized_constants.pt", "serialized_constants.json")
LEGACY_EXAMPLE_INPUTS = "serialized_example_inputs.pt"
LEGACY_VERSION = "version"
LEGACY_MODEL_NAME = "model"


class Archive:
    """An opened ``.pt2`` file. Use :func:`open_archive`.

    Attributes: ``source`` (path or ``"<file object>"``), ``layout`` (``"pt2"`` or
    ``"legacy"``), ``top`` (the PT2 top folder, ``""`` for legacy), ``model_names``.
    ``verify`` (default True): check each stored member's CRC-32 the first time
    :meth:`buffer` maps it (about 0.25 s per GB; reads through zipfile are always checked).
    """

    def __init__(self, source: str | os.PathLike | BinaryIO, *, verify: bool = True):
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
        self.verify = verify
        self._verified: set[str] = set()
        try:
            self._directory = ZipDirectory(fileobj, self.source)
        except BaseException:
            self.close()
            raise
        self.members: dict[str, Member] = self._directory.members
        self._detect_layout()

    # -- layout ----------------------------------------------------------------------
    def _detect_layout(self) -> None:
        names = list(self.members)
        if LEGACY_PROGRAM in self.members:
            self.layout, self.top = "legacy", ""
            self.model_names = [LEGACY_MODEL_NAME]
            return
        tops = {n.split("/", 1)[0] for n in names if "/" in n}
        for top in sorted(tops):
            if f"{top}/{LEGACY_PROGRAM}" in self.members:
                self.layout, self.top = "legacy", top
                self.model_names = [LEGACY_MODEL_NAME]
                return
        for top in sorted(tops):
            prefix = f"{top}/{PT2_MODELS_DIR}"
            models = sorted(
                n[len(prefix) : -len(".json")]
                for n in names
                if n.startswith(prefix) and n.endswith(".json") and "/" not in n[len(prefix) :]
            )
            if models:
                self.layout, self.top, self.model_names = "pt2", top, models
                return
        for top in sorted(tops):
            if any(n.startswith(f"{top}/{PT2_AOTI_DIR}") for n in names):
                raise AOTInductorPackageError(
                    f"{self.source}: this is an AOTInductor package (compiled code under "
                    f"{top}/{PT2_AOTI_DIR}), not an exported graph pt2interp can interpret. "
                    "Run it with torch._inductor.aoti_load_package(path) on a torch matching "
                    "the one that compiled it, or export the model again with torch.export.save."
                )
        if not names:
            raise FormatError(f"{self.source}: the zip archive is empty")
        raise FormatError(
            f"{self.source}: no exported program found: neither {LEGACY_PROGRAM} (torch 2.1-2.7) "
            f"nor <top>/{PT2_MODELS_DIR}<name>.json (torch 2.8+) is in the archive"
        )

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
        return self._directory.read(self.info(relative).name, limit=limit)

    def read_text(self, relative: str, *, limit: int = MAX_JSON_BYTES) -> str:
        data = self.read(relative, limit=limit)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(
                f"{self.source}: member {self.member_path(relative)!r} is not UTF-8 text ({exc})"
            ) from None

    def buffer(self, relative: str) -> memoryview | bytes:
        """The member's bytes without a copy where possible (a copy-on-write file mapping).

        Writes to the returned buffer stay private to this process: the file is never
        changed. Compressed members and file objects fall back to :meth:`read`. A mapped
        member's CRC-32 is checked the first time it is mapped (unless ``verify`` is off).
        """
        m = self.info(relative)
        if not m.stored or self._file is None or m.size == 0:
            return self.read(relative)
        start = self._directory.data_start(m)
        mm = self._mapping()
        if start + m.size > len(mm):
            raise FormatError(
                f"{self.source}: member {m.name!r} extends past the end of the file "
                f"(truncated archive?)"
            )
        view = memoryview(mm)[start : start + m.size]
        if self.verify and m.name not in self._verified:
            self._directory.check_crc(m, view)  # zipfile would have; the mapping bypasses it
            self._verified.add(m.name)
        return view

    def _mapping(self) -> mmap.mmap:
        if self._mmap is None:
            try:
                self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as exc:
                raise FormatError(f"{self.source}: cannot map the file ({exc})") from None
        return self._mmap

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


def open_archive(source: str | os.PathLike | BinaryIO | bytes, *, verify: bool = True) -> Archive:
    """Open a ``.pt2`` file (path, binary file object or bytes) and detect its layout.

    Raises :class:`~pt2interp.errors.FormatError` for anything that is not a readable
    exported-program archive, :class:`~pt2interp.errors.AOTInductorPackageError` for
    compiled AOTInductor packages, :class:`~pt2interp.errors.LimitError` for more members
    than ``pt2interp.limits.current().max_archive_members``. ``verify=False`` skips the
    CRC-32 check of memory-mapped weight records (see :class:`Archive`).
    """
    if isinstance(source, Path) or hasattr(source, "__fspath__"):
        source = os.fspath(source)
    elif (
        not isinstance(source, (str, bytes, bytearray, memoryview))
        and hasattr(source, "open")
        and not hasattr(source, "read")
    ):
        # importlib.resources Traversable
        with source.open("rb") as f:
            return Archive(io.BytesIO(f.read()), verify=verify)
    return Archive(source, verify=verify)
