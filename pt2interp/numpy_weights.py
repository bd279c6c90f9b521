"""Weights and constants as numpy arrays, read without importing torch.

Every layout is covered:

* torch 2.9+ raw records (``data/weights/weight_<i>``): ``np.frombuffer`` over a copy-on-write
  mapping of the member, then ``as_strided`` with the sizes, strides and storage offset of the
  entry's ``tensor_meta``. Entries naming the same record share one buffer (tied weights stay
  tied, ``np.shares_memory`` holds). A view reaching past the end of its record raises
  :class:`~pt2interp.errors.WeightError` naming the member and the tensor.
* pickled payloads (the legacy ``serialized_state_dict.pt`` / ``serialized_constants.pt``,
  torch 2.8's ``data/weights/model.pt``, ``use_pickle`` entries) through
  :func:`pt2interp.torch_pickle.load_torch_save`, a restricted unpickler that knows only the
  tensor rebuild functions and storages and refuses anything else.

Arrays are read-only views (copy with ``np.array(a)`` before writing). dtypes numpy lacks:
``bfloat16`` and the ``float8_*`` types come back as ``ml_dtypes`` arrays when ``ml_dtypes`` is
installed, and otherwise as their raw bits (``uint16`` / ``uint8``); ``complex32`` is always raw
``uint32`` bits. :attr:`StoredTensor.raw_bits` says which, :attr:`StoredTensor.dtype` always
names the torch dtype.

>>> import importlib.resources as r
>>> from pt2interp.archive import open_archive
>>> from pt2interp.numpy_weights import read_stored_tensors
>>> arc = open_archive(r.files("pt2interp.examples") / "tiny_mlp.pt2")
>>> state, constants = read_stored_tensors(arc, "model")
>>> first = state[0]
>>> first.name, first.dtype, first.array.shape, first.is_parameter
('fc1.weight', 'float32', (32, 8), True)
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from pt2interp import versions
from pt2interp.archive import Archive
from pt2interp.errors import WeightError
from pt2interp.program import read_payload_config
from pt2interp.schema import PayloadMeta, TensorMeta
from pt2interp.torch_pickle import RawTensor, load_torch_save
from pt2interp.zipdir import Member

try:  # optional: real numpy dtypes for bfloat16 and float8
    import ml_dtypes
except ImportError:  # pragma: no cover - depends on the environment
    ml_dtypes = None

__all__ = [
    "MAX_ZERO_FILL_BYTES",
    "RAW_BITS_DTYPES",
    "StoredTensor",
    "bytes_needed",
    "check_record",
    "check_view",
    "numpy_dtype",
    "read_stored_tensors",
    "strided_view",
]

# Empty records (torch writes them for tensors it could not write by bytes) load as zeros, as
# torch loads them; a file of a few bytes must not make that allocate without bound, so the
# zeros one archive's weights (or constants) may ask for are capped, on both backends.
MAX_ZERO_FILL_BYTES = 1 << 30
_INT64_MAX = (1 << 63) - 1

# dtypes numpy has under the same name as torch
_NATIVE = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "complex64",
    "complex128",
)
# dtypes numpy lacks: the ml_dtypes name (if any) and the unsigned type of the same width
_BITS = {
    "bfloat16": np.uint16,
    "float8_e4m3fn": np.uint8,
    "float8_e5m2": np.uint8,
    "float8_e4m3fnuz": np.uint8,
    "float8_e5m2fnuz": np.uint8,
    "float8_e8m0fnu": np.uint8,
    "complex32": np.uint32,
}


def numpy_dtype(name: str, *, where: str = "") -> tuple[np.dtype, bool]:
    """The numpy dtype holding torch dtype ``name`` and whether it holds raw bits.

    >>> numpy_dtype("float32")
    (dtype('float32'), False)
    >>> numpy_dtype("bfloat16")[0].itemsize
    2
    """
    if name in _NATIVE:
        return np.dtype(name), False
    if name in _BITS:
        native = getattr(ml_dtypes, name, None) if ml_dtypes is not None else None
        return (np.dtype(_BITS[name]), True) if native is None else (np.dtype(native), False)
    raise WeightError(f"{where}dtype {name} has no numpy representation")


# torch dtypes whose arrays hold bit patterns in this environment (depends on ml_dtypes)
RAW_BITS_DTYPES = frozenset(n for n in _BITS if numpy_dtype(n)[1])


@dataclass(frozen=True, eq=False)
class StoredTensor:
    """One tensor as the archive stores it.

    ``name`` is its state-dict or constant name, ``dtype`` the torch dtype name, ``storage`` a
    key equal for tensors that view one storage, ``is_parameter`` whether the archive marks it
    an ``nn.Parameter``, ``raw_bits`` whether ``array`` holds bit patterns rather than values.
    """

    name: str
    array: np.ndarray
    dtype: str
    storage: str
    is_parameter: bool
    raw_bits: bool

    @property
    def view_key(self) -> tuple:
        """Equal for tensors that are the very same view of the same storage (exact aliases)."""
        a = self.array
        return (self.storage, self.dtype, a.shape, a.strides, a.__array_interface__["data"][0])


def read_stored_tensors(
    archive: Archive, model_name: str
) -> tuple[list[StoredTensor], list[StoredTensor]]:
    """``(state, constants)``: the stored state dict (parameters and persistent buffers) and the
    stored constants (tensor constants, non-persistent buffers), in stored order.

    Script objects and other opaque constants are skipped: they are not tensors.
    """
    if archive.layout == "legacy":
        return (
            _pickled_member(archive, versions.LEGACY_STATE_DICT),
            _pickled_member(archive, versions.LEGACY_CONSTANTS),
        )
    pickled = versions.PT2_PICKLED_WEIGHTS.format(model_name)
    if archive.has(pickled):  # torch 2.8
        return (
            _pickled_member(archive, (pickled,)),
            _pickled_member(archive, (versions.PT2_PICKLED_CONSTANTS.format(model_name),)),
        )
    return (
        _raw_payloads(
            archive, versions.PT2_WEIGHTS_CONFIG.format(model_name), versions.PT2_WEIGHTS_DIR
        ),
        _raw_payloads(
            archive, versions.PT2_CONSTANTS_CONFIG.format(model_name), versions.PT2_CONSTANTS_DIR
        ),
    )


# -- pickled payloads ---------------------------------------------------------------------------


def _pickled_member(archive: Archive, candidates: tuple[str, ...]) -> list[StoredTensor]:
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
            return []
        obj = load_torch_save(archive.read(relative), source=f"{archive.source}:{member}")
        if not isinstance(obj, dict):
            raise WeightError(
                f"{archive.source}: {member} holds a {type(obj).__name__}, expected a dict of tensors"
            )
        out = []
        for name, value in obj.items():
            if not isinstance(value, RawTensor):
                continue  # a non-tensor constant: nothing numpy can hold
            out.append(
                StoredTensor(
                    str(name),
                    value.array,
                    value.dtype,
                    f"{member}:{value.storage_key}",
                    value.is_parameter,
                    value.dtype in RAW_BITS_DTYPES,
                )
            )
        return out
    return []


# -- raw records (torch 2.9+) -------------------------------------------------------------------


def _raw_payloads(archive: Archive, config_member: str, base_dir: str) -> list[StoredTensor]:
    if not archive.has(config_member):
        return []
    swap = _archive_byteorder(archive) != sys.byteorder
    config = read_payload_config(archive, config_member)
    needed = bytes_needed(config)
    zero_budget = [MAX_ZERO_FILL_BYTES]
    flats: dict[str, np.ndarray] = {}
    out = []
    for fqn, meta in config.items():
        member = base_dir + meta.path_name
        where = f"{archive.source}: {archive.member_path(member)} ({fqn}): "
        if meta.use_pickle or meta.tensor_meta is None:
            if meta.path_name.startswith(("custom_obj", "opaque_obj")) or meta.tensor_meta is None:
                continue  # script objects are not tensors and are never unpickled
            out.extend(_pickled_entry(archive, member, fqn, meta.is_param))
            continue
        tm = meta.tensor_meta
        dtype, raw = numpy_dtype(tm.dtype, where=where)
        key = f"{tm.dtype}:{member}"
        flat = flats.get(key)
        if flat is None:
            flat = flats[key] = _flat_record(
                archive, member, dtype, tm.dtype, where, swap, needed[meta.path_name]
            )
        out.append(
            StoredTensor(
                fqn,
                strided_view(flat, tm, where, zero_budget),
                tm.dtype,
                archive.member_path(member),
                meta.is_param,
                raw,
            )
        )
    return out


def _pickled_entry(archive: Archive, member: str, fqn: str, is_param: bool) -> list[StoredTensor]:
    # A use_pickle entry is one torch.save'd tensor (torch writes those it cannot write raw).
    full = archive.member_path(member)
    obj = load_torch_save(archive.read(member), source=f"{archive.source}:{full}")
    if not isinstance(obj, RawTensor):
        return []
    return [
        StoredTensor(
            fqn,
            obj.array,
            obj.dtype,
            f"{full}:{obj.storage_key}",
            is_param,
            obj.dtype in RAW_BITS_DTYPES,
        )
    ]


def _archive_byteorder(archive: Archive) -> str:
    # torch writes "little" or "big"; archives without the member are little-endian
    if archive.has("byteorder"):
        return "big" if archive.read("byteorder", limit=16).strip() == b"big" else "little"
    return "little"


def _flat_record(
    archive: Archive,
    member: str,
    dtype: np.dtype,
    dtype_name: str,
    where: str,
    swap: bool,
    needed: int | None,
) -> np.ndarray:
    if check_record(archive, member, dtype.itemsize, dtype_name, needed, where).size == 0:
        return np.empty(0, dtype=dtype)
    flat = np.frombuffer(archive.buffer(member), dtype=dtype)
    if swap and dtype.itemsize > 1:
        # complex numbers swap each half; everything else swaps whole elements
        unit = (
            dtype.itemsize // 2
            if dtype.kind == "c" or dtype_name == "complex32"
            else dtype.itemsize
        )
        raw = flat.view(np.uint8).reshape(-1, unit)[:, ::-1]
        flat = np.ascontiguousarray(raw).reshape(-1).view(dtype)
    flat.flags.writeable = False
    return flat


def strided_view(
    flat: np.ndarray, tm: TensorMeta, where: str, zero_budget: list[int] | None = None
) -> np.ndarray:
    """``as_strided`` view of a flat record, refusing views that reach past its end (see
    :func:`check_view`, which ``zero_budget`` is passed to)."""
    budget = zero_budget if zero_budget is not None else [MAX_ZERO_FILL_BYTES]
    numel = check_view(tm, flat.size, flat.itemsize, where, budget)
    if numel == 0:
        return np.empty(tm.sizes, dtype=flat.dtype)
    if flat.size == 0:
        return np.zeros(tm.sizes, dtype=flat.dtype)
    item = flat.itemsize
    try:
        return np.lib.stride_tricks.as_strided(
            flat[tm.storage_offset :],
            shape=tm.sizes,
            strides=[s * item for s in tm.strides],
            writeable=False,
        )
    except ValueError as exc:  # what numpy refuses beyond check_view's rules
        raise WeightError(
            f"{where}cannot view sizes {list(tm.sizes)} strides {list(tm.strides)}: {exc}"
        ) from None


# -- checks both backends make (pt2interp.weights uses them too) ---------------------------------


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
    zeros: their bytes are taken from ``zero_budget`` (a one-item list shared by one archive's
    tensors), and refused beyond it.
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
            f"{where}sizes {list(sizes)} strides {list(strides)} offset {offset} do not fit in int64"
        )
    if numel == 0:
        return 0
    if record_items == 0:
        # torch writes empty records for tensors it could not serialize by bytes: zeros, as torch does
        nbytes = numel * itemsize
        if nbytes > zero_budget[0]:
            raise WeightError(
                f"{where}the record is empty and the tensor declares {nbytes} bytes of zeros, over "
                f"the {MAX_ZERO_FILL_BYTES} bytes of zeros an archive may ask for "
                "(pt2interp.numpy_weights.MAX_ZERO_FILL_BYTES)"
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
