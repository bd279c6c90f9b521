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

from dataclasses import dataclass

import numpy as np

from pt2interp.archive import Archive
from pt2interp.byteorder import to_native
from pt2interp.errors import WeightError
from pt2interp.payload import (  # the checks live there; imported from here too
    MAX_ZERO_FILL_BYTES,
    OpaqueRecord,
    PickledRecord,
    Record,
    TensorRecord,
    bytes_needed,
    check_record,
    check_view,
    read_payloads,
)
from pt2interp.schema import TensorMeta
from pt2interp.torch_pickle import RawTensor, load_torch_save

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


def read_stored_tensors(
    archive: Archive, model_name: str
) -> tuple[list[StoredTensor], list[StoredTensor]]:
    """``(state, constants)``: the stored state dict (parameters and persistent buffers) and the
    stored constants (tensor constants, non-persistent buffers), in stored order: the records
    of :func:`pt2interp.payload.read_payloads`, materialized.

    Script objects and other opaque constants are skipped: they are not tensors.
    """
    stored = read_payloads(archive, model_name, _numpy_itemsize)
    return _materialize(archive, stored.state), _materialize(archive, stored.constants)


def _numpy_itemsize(name: str, where: str) -> int:
    return numpy_dtype(name, where=where)[0].itemsize


def _materialize(archive: Archive, records: list[Record]) -> list[StoredTensor]:
    out: list[StoredTensor] = []
    flats: dict[tuple[str, str], np.ndarray] = {}  # one per record and dtype: tied views share it
    for record in records:
        if isinstance(record, OpaqueRecord):
            continue  # script objects are not tensors and are never unpickled
        if isinstance(record, PickledRecord):
            if record.holds_tensor:
                out.extend(_unpickled(archive, record))
            continue
        key = (record.relative, record.dtype)
        flat = flats.get(key)
        if flat is None:
            flat = flats[key] = _flat_record(archive, record)
        out.append(
            StoredTensor(
                record.name,
                _strided(
                    flat,
                    record.numel,
                    record.sizes,
                    record.strides,
                    record.storage_offset,
                    record.where,
                ),
                record.dtype,
                record.member,
                record.is_parameter,
                record.dtype in RAW_BITS_DTYPES,
            )
        )
    return out


# -- pickled payloads ---------------------------------------------------------------------------


def _unpickled(archive: Archive, record: PickledRecord) -> list[StoredTensor]:
    """The tensors of a torch.save payload: a whole dict's (non-tensor values are skipped:
    numpy has nothing to hold them in) or one entry's."""
    obj = load_torch_save(archive.read(record.relative), source=f"{archive.source}:{record.member}")
    items = record.entries(obj, archive.source)
    return [
        StoredTensor(
            str(name),
            value.array,
            value.dtype,
            f"{record.member}:{value.storage_key}",
            value.is_parameter if record.name is None else record.is_parameter,
            value.dtype in RAW_BITS_DTYPES,
        )
        for name, value in items
        if isinstance(value, RawTensor)
    ]


# -- raw records (torch 2.9+) -------------------------------------------------------------------


def _flat_record(archive: Archive, record: TensorRecord) -> np.ndarray:
    """The whole record as a flat read-only array of the record's dtype, in native byte order."""
    dtype, _ = numpy_dtype(record.dtype)
    if record.record_bytes == 0:
        return np.empty(0, dtype=dtype)
    buf = archive.buffer(record.relative)
    if record.swap_unit > 1:
        buf = to_native(buf, record.swap_unit)
    flat = np.frombuffer(buf, dtype=dtype)
    flat.flags.writeable = False
    return flat


def _strided(
    flat: np.ndarray, numel: int, sizes: tuple, strides: tuple, offset: int, where: str
) -> np.ndarray:
    # the geometry is checked (pt2interp.payload.check_view): this only makes the view
    if numel == 0:
        return np.empty(sizes, dtype=flat.dtype)
    if flat.size == 0:
        return np.zeros(sizes, dtype=flat.dtype)  # an empty record stands for zeros
    item = flat.itemsize
    try:
        return np.lib.stride_tricks.as_strided(
            flat[offset:], shape=sizes, strides=[s * item for s in strides], writeable=False
        )
    except ValueError as exc:  # what numpy refuses beyond check_view's rules
        raise WeightError(
            f"{where}cannot view sizes {list(sizes)} strides {list(strides)}: {exc}"
        ) from None


def strided_view(
    flat: np.ndarray, tm: TensorMeta, where: str, zero_budget: list[int] | None = None
) -> np.ndarray:
    """``as_strided`` view of a flat record, refusing views that reach past its end (see
    :func:`pt2interp.payload.check_view`, which ``zero_budget`` is passed to)."""
    budget = zero_budget if zero_budget is not None else [MAX_ZERO_FILL_BYTES]
    numel = check_view(tm, flat.size, flat.itemsize, where, budget)
    return _strided(flat, numel, tuple(tm.sizes), tuple(tm.strides), tm.storage_offset, where)
