"""Where an archive keeps each weight and constant: read once, without torch, for every backend.

Three layouts hold an exported program's state dict (parameters, persistent buffers) and its
constants (tensor constants, non-persistent buffers, script objects):

* legacy (torch 2.1 to 2.7): one ``torch.save`` payload each, ``serialized_state_dict.pt`` and
  ``serialized_constants.pt``;
* torch 2.8: the same as ``data/weights/<model>.pt`` and ``data/constants/<model>.pt``;
* torch 2.9+: ``data/weights/<model>_weights_config.json`` (and ``_constants_config.json``)
  name, per entry, a raw record member (``data/weights/weight_<i>``) and the view on it
  (dtype, sizes, strides, storage offset); entries naming one record share its storage (tied
  weights). An entry may instead be one pickled tensor (``use_pickle``) or a script object.

:func:`read_payloads` turns any of them into records, in stored order:
:class:`TensorRecord` (a view on raw bytes, every extent checked here), :class:`PickledRecord`
(a ``torch.save`` payload for the backend to unpickle: ``torch.load(weights_only=True)`` or
:mod:`pt2interp.torch_pickle`) and :class:`OpaqueRecord` (a script object, never unpickled).
:mod:`pt2interp.weights` (torch) and :mod:`pt2interp.numpy_weights` only materialize them;
:func:`declared_views` gives ``read_schema`` the same configs unchecked, without reading a byte.

>>> import importlib.resources as r
>>> from pt2interp.archive import open_archive
>>> from pt2interp.payload import read_payloads
>>> stored = read_payloads(open_archive(r.files("pt2interp.examples") / "tiny_mlp.pt2"), "model")
>>> w = stored.state[0]
>>> w.name, w.member.split("/", 1)[1], w.dtype, w.sizes, w.strides, w.byte_range, w.byteorder
('fc1.weight', 'data/weights/weight_0', 'float32', (32, 8), (8, 1), (0, 1024), 'little')
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pt2interp import versions
from pt2interp.archive import (
    LEGACY_CONSTANTS,
    LEGACY_STATE_DICT,
    PT2_CONSTANTS_CONFIG,
    PT2_CONSTANTS_DIR,
    PT2_PICKLED_CONSTANTS,
    PT2_PICKLED_WEIGHTS,
    PT2_WEIGHTS_CONFIG,
    PT2_WEIGHTS_DIR,
    Archive,
)
from pt2interp.byteorder import needs_swap, swap_unit
from pt2interp.errors import WeightError
from pt2interp.program import read_payload_config
from pt2interp.schema import PayloadMeta, TensorMeta
from pt2interp.zipdir import Member

__all__ = [
    "MAX_ZERO_FILL_BYTES",
    "DeclaredView",
    "OpaqueRecord",
    "PickledRecord",
    "Record",
    "StoredPayloads",
    "TensorRecord",
    "archive_byteorder",
    "bytes_needed",
    "check_record",
    "check_view",
    "declared_views",
    "read_payloads",
]

# Empty records (torch writes them for tensors it could not write by bytes) load as zeros, as
# torch loads them; a file of a few bytes must not make that allocate without bound, so the
# zeros one read of an archive's weights and constants may ask for are capped, on every backend.
MAX_ZERO_FILL_BYTES = 1 << 30
_INT64_MAX = (1 << 63) - 1
# torch names script objects' members so; they are kept by name and never unpickled
_OPAQUE_PREFIXES = ("custom_obj", "opaque_obj")


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of a raw record (torch 2.9+), checked: the view fits the record, the record
    is a whole number of elements, sizes and strides are static, non-negative, within int64.

    ``relative`` is the member relative to the archive's top folder (what :class:`Archive`
    reads), ``member`` its full name (what errors and storage keys show), ``where`` the prefix
    of errors about this tensor. ``record_bytes`` is the member's size; an empty record stands
    for zeros (:attr:`zero_fill`). ``byteorder`` is the order the bytes are stored in.
    """

    name: str
    relative: str
    member: str
    where: str
    dtype: str
    itemsize: int
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    storage_offset: int
    numel: int
    record_bytes: int
    byteorder: str
    is_parameter: bool

    @property
    def zero_fill(self) -> bool:
        """Whether the tensor is zeros standing for bytes torch did not write."""
        return self.numel > 0 and self.record_bytes == 0

    @property
    def byte_range(self) -> tuple[int, int]:
        """``(start, end)``: the bytes of the record the view reads ((0, 0) if none)."""
        if self.numel == 0 or self.record_bytes == 0:
            return 0, 0
        extent = sum((n - 1) * s for n, s in zip(self.sizes, self.strides)) + 1
        return self.storage_offset * self.itemsize, (self.storage_offset + extent) * self.itemsize

    @property
    def swap_unit(self) -> int:
        """Bytes per byte-swapped unit to bring the record to native order; 1: none."""
        return swap_unit(self.dtype, self.itemsize) if needs_swap(self.byteorder) else 1


@dataclass(frozen=True)
class PickledRecord:
    """A ``torch.save`` payload: a whole state dict or constants dict (``name`` None: legacy
    and torch 2.8) or one entry's tensor (``use_pickle``). ``holds_tensor`` is False for an
    entry the config gives no tensor metadata: an object, not a tensor."""

    name: str | None
    relative: str
    member: str
    is_parameter: bool = False
    holds_tensor: bool = True

    def entries(self, unpickled: object, source: str) -> list[tuple[str, object]]:
        """``(name, value)`` of what the payload unpickled to: one entry's tensor, or the
        items of a whole dict (anything else is refused)."""
        if self.name is not None:
            return [(self.name, unpickled)]
        if not isinstance(unpickled, dict):
            raise WeightError(
                f"{source}: {self.member} holds a {type(unpickled).__name__}, "
                "expected a dict of tensors"
            )
        return list(unpickled.items())


@dataclass(frozen=True)
class OpaqueRecord:
    """A script object or opaque object constant: kept by name, never unpickled."""

    name: str
    path_name: str


Record = TensorRecord | PickledRecord | OpaqueRecord


@dataclass(frozen=True)
class StoredPayloads:
    """What :func:`read_payloads` found: the state dict's and the constants' records."""

    state: list[Record]
    constants: list[Record]


@dataclass(frozen=True)
class DeclaredView:
    """A torch 2.9+ config entry as declared, unchecked: the record member (relative) and the
    view's metadata (None for script objects)."""

    name: str
    relative: str
    tensor_meta: TensorMeta | None


def read_payloads(
    archive: Archive, model_name: str, itemsize_of: Callable[[str, str], int] | None = None
) -> StoredPayloads:
    """The records of ``model_name``'s state dict and constants, in stored order.

    ``itemsize_of(dtype_name, where)`` is the backend's element size of a dtype, raising its
    own error for dtypes it cannot hold; it is asked first about each raw entry. Without it,
    :data:`pt2interp.versions.ITEMSIZE` decides.
    """
    if archive.layout == "legacy":
        return StoredPayloads(
            _whole_payload(archive, LEGACY_STATE_DICT),
            _whole_payload(archive, LEGACY_CONSTANTS),
        )
    pickled = PT2_PICKLED_WEIGHTS.format(model_name)
    if archive.has(pickled):  # torch 2.8
        return StoredPayloads(
            _whole_payload(archive, (pickled,)),
            _whole_payload(archive, (PT2_PICKLED_CONSTANTS.format(model_name),)),
        )
    reader = _RawReader(archive, itemsize_of or _known_itemsize)
    return StoredPayloads(
        reader.section(PT2_WEIGHTS_CONFIG.format(model_name), PT2_WEIGHTS_DIR),
        reader.section(PT2_CONSTANTS_CONFIG.format(model_name), PT2_CONSTANTS_DIR),
    )


def declared_views(archive: Archive, model_name: str) -> list[DeclaredView]:
    """The weights' then the constants' config entries of a torch 2.9+ archive (none for the
    pickled layouts), as declared: for describing, which reads no record."""
    if archive.layout != "pt2":
        return []
    out = []
    for config, base in (
        (PT2_WEIGHTS_CONFIG, PT2_WEIGHTS_DIR),
        (PT2_CONSTANTS_CONFIG, PT2_CONSTANTS_DIR),
    ):
        member = config.format(model_name)
        if archive.has(member):
            for name, meta in read_payload_config(archive, member).items():
                out.append(DeclaredView(name, base + meta.path_name, meta.tensor_meta))
    return out


def archive_byteorder(archive: Archive) -> str:
    """``big`` where the archive's ``byteorder`` member says so, else ``little`` (torch writes
    ``little`` or ``big``; archives without the member are little-endian)."""
    if archive.has("byteorder") and archive.read("byteorder", limit=16).strip() == b"big":
        return "big"
    return "little"


# -- pickled payloads ---------------------------------------------------------------------------


def _whole_payload(archive: Archive, candidates: tuple[str, ...]) -> list[Record]:
    for relative in candidates:
        if not archive.has(relative):
            continue
        member = archive.member_path(relative)
        if not relative.endswith(".pt"):
            raise WeightError(
                f"{archive.source}: {member} is not a torch.save payload; "
                "this archive predates the pickled state dict (torch < 2.3)"
            )
        if archive.info(relative).size == 0:
            return []  # nothing stored
        return [PickledRecord(None, relative, member)]
    return []


# -- raw records (torch 2.9+) -------------------------------------------------------------------


def _known_itemsize(dtype_name: str, where: str) -> int:
    itemsize = versions.ITEMSIZE.get(dtype_name)
    if itemsize is None:
        raise WeightError(f"{where}dtype {dtype_name} has no known element size")
    return itemsize


class _RawReader:
    """One read of an archive's configs: its byte order, and the zeros budget its sections share."""

    def __init__(self, archive: Archive, itemsize_of: Callable[[str, str], int]):
        self.archive = archive
        self.itemsize_of = itemsize_of
        self.byteorder = archive_byteorder(archive)
        self.zero_budget = [MAX_ZERO_FILL_BYTES]

    def section(self, config_member: str, base_dir: str) -> list[Record]:
        archive = self.archive
        if not archive.has(config_member):
            return []
        config = read_payload_config(archive, config_member)
        needed = bytes_needed(config)
        checked: dict[tuple[str, str], Member] = {}
        out: list[Record] = []
        for fqn, meta in config.items():
            relative = base_dir + meta.path_name
            member = archive.member_path(relative)
            tm = meta.tensor_meta
            if meta.use_pickle or tm is None:
                if meta.path_name.startswith(_OPAQUE_PREFIXES):
                    out.append(OpaqueRecord(fqn, meta.path_name))
                else:
                    out.append(PickledRecord(fqn, relative, member, meta.is_param, tm is not None))
                continue
            where = f"{archive.source}: {member} ({fqn}): "
            itemsize = self.itemsize_of(tm.dtype, where)
            info = checked.get((relative, tm.dtype))
            if info is None:
                info = checked[relative, tm.dtype] = check_record(
                    archive, relative, itemsize, tm.dtype, needed[meta.path_name], where
                )
            numel = check_view(tm, info.size // itemsize, itemsize, where, self.zero_budget)
            out.append(
                TensorRecord(
                    fqn,
                    relative,
                    member,
                    where,
                    tm.dtype,
                    itemsize,
                    tuple(tm.sizes),
                    tuple(tm.strides),
                    tm.storage_offset,
                    numel,
                    info.size,
                    self.byteorder,
                    meta.is_param,
                )
            )
        return out


# -- the checks ---------------------------------------------------------------------------------


def bytes_needed(config: dict[str, PayloadMeta]) -> dict[str, int]:
    """Per record (``path_name``): the bytes the views declared on it reach. A compressed record
    may inflate to no more: torch never compresses records, so only a hostile file asks for
    more than its tensors need."""
    needed: dict[str, int] = {}
    for meta in config.values():
        if meta.use_pickle or meta.tensor_meta is None:
            continue
        tm = meta.tensor_meta
        sizes, strides, offset = tm.sizes, tm.strides, tm.storage_offset
        static = all(isinstance(x, int) for x in (*sizes, *strides, offset)) and len(
            strides
        ) == len(sizes)
        if not static or 0 in sizes:
            n = 0  # an empty view needs nothing; check_view refuses one that is not static
        else:
            n = (
                offset + sum((s - 1) * st for s, st in zip(sizes, strides)) + 1
            ) * versions.ITEMSIZE.get(tm.dtype, 1)
        needed[meta.path_name] = max(needed.get(meta.path_name, 0), n)
    return needed


def check_record(
    archive: Archive, member: str, itemsize: int, dtype_name: str, needed: int | None, where: str
) -> Member:
    """A raw record's directory entry, once its size fits its dtype and, compressed, the tensors
    declared on it (``needed``, from :func:`bytes_needed`)."""
    info = archive.info(member)
    if info.size % itemsize:
        raise WeightError(
            f"{where}{info.size} bytes is not a whole number of {dtype_name} elements"
        )
    if not info.stored and needed is not None and info.size > needed:
        # Stored records are mapped, not read; a compressed one is inflated into memory
        raise WeightError(
            f"{where}the compressed record declares {info.size} bytes but the tensors stored "
            f"in it need only {needed}: refusing to inflate it"
        )
    return info


def check_view(
    tm: TensorMeta, record_items: int, itemsize: int, where: str, zero_budget: list[int]
) -> int:
    """Check the view ``tm`` declares on a flat record of ``record_items`` elements of
    ``itemsize`` bytes; returns its element count.

    Refused: symbolic geometry; sizes, strides or offset beyond int64; views reaching past the
    record's end; views whose bytes int64 cannot count (a stride-0 view of a huge size: numpy
    cannot make one, torch's ``nbytes`` wraps around). A view on an empty record stands for
    zeros: their bytes are taken from ``zero_budget`` (a one-item list shared by one read of
    an archive's tensors), and refused beyond it.
    """
    sizes, strides, offset = tm.sizes, tm.strides, tm.storage_offset
    if not all(isinstance(x, int) for x in (*sizes, *strides, offset)):
        raise WeightError(f"{where}weights must have static sizes, got {list(map(str, sizes))}")
    if len(strides) != len(sizes):
        raise WeightError(f"{where}{len(strides)} strides for {len(sizes)} sizes")
    if any(x < 0 for x in (*sizes, *strides, offset)):
        raise WeightError(
            f"{where}negative sizes {list(sizes)}, strides {list(strides)} or offset {offset}"
        )
    numel = math.prod(sizes)
    if any(x > _INT64_MAX for x in (*sizes, *strides, offset, numel)):
        raise WeightError(
            f"{where}sizes {list(sizes)} strides {list(strides)} offset {offset} "
            "do not fit in int64"
        )
    if numel == 0:
        return 0
    if record_items == 0:
        # torch writes empty records for tensors it could not serialize by bytes: zeros, as in torch
        nbytes = numel * itemsize
        if nbytes > zero_budget[0]:
            raise WeightError(
                f"{where}the record is empty and the tensor declares {nbytes} bytes of zeros, over "
                f"the {MAX_ZERO_FILL_BYTES} bytes of zeros an archive may ask for "
                "(pt2interp.payload.MAX_ZERO_FILL_BYTES)"
            )
        zero_budget[0] -= nbytes
        return numel
    extent = offset + sum((s - 1) * st for s, st in zip(sizes, strides)) + 1
    if extent > record_items:
        raise WeightError(
            f"{where}declares sizes {list(sizes)} strides {list(strides)} offset {offset}, needing "
            f"{extent * itemsize} bytes, but the record holds only {record_items * itemsize}"
        )
    if numel * itemsize > _INT64_MAX:  # within the record only by repeating it: stride 0
        raise WeightError(
            f"{where}sizes {list(sizes)} strides {list(strides)} make {numel} elements, "
            f"{numel * itemsize} bytes: more than int64 can count"
        )
    return numel
