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

import sys
from dataclasses import dataclass

import numpy as np

from pt2interp import versions
from pt2interp.archive import Archive
from pt2interp.errors import WeightError
from pt2interp.program import read_payload_config
from pt2interp.schema import SymExpr, TensorMeta
from pt2interp.torch_pickle import RawTensor, load_torch_save

try:  # optional: real numpy dtypes for bfloat16 and float8
    import ml_dtypes
except ImportError:  # pragma: no cover - depends on the environment
    ml_dtypes = None

__all__ = ["RAW_BITS_DTYPES", "StoredTensor", "numpy_dtype", "read_stored_tensors", "strided_view"]

# An empty record stands for zeros (see strided_view); never more than this many bytes of them.
_MAX_ZEROS_BYTES = 1 << 30

# dtypes numpy has under the same name as torch
_NATIVE = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
           "uint32", "uint64", "bool", "complex64", "complex128")
# dtypes numpy lacks: the ml_dtypes name (if any) and the unsigned type of the same width
_BITS = {"bfloat16": np.uint16, "float8_e4m3fn": np.uint8, "float8_e5m2": np.uint8,
         "float8_e4m3fnuz": np.uint8, "float8_e5m2fnuz": np.uint8, "float8_e8m0fnu": np.uint8,
         "complex32": np.uint32}


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


def read_stored_tensors(archive: Archive, model_name: str) -> tuple[list[StoredTensor], list[StoredTensor]]:
    """``(state, constants)``: the stored state dict (parameters and persistent buffers) and the
    stored constants (tensor constants, non-persistent buffers), in stored order.

    Script objects and other opaque constants are skipped: they are not tensors.
    """
    if archive.layout == "legacy":
        return (_pickled_member(archive, versions.LEGACY_STATE_DICT),
                _pickled_member(archive, versions.LEGACY_CONSTANTS))
    pickled = versions.PT2_PICKLED_WEIGHTS.format(model_name)
    if archive.has(pickled):  # torch 2.8
        return (_pickled_member(archive, (pickled,)),
                _pickled_member(archive, (versions.PT2_PICKLED_CONSTANTS.format(model_name),)))
    return (_raw_payloads(archive, versions.PT2_WEIGHTS_CONFIG.format(model_name), versions.PT2_WEIGHTS_DIR),
            _raw_payloads(archive, versions.PT2_CONSTANTS_CONFIG.format(model_name), versions.PT2_CONSTANTS_DIR))


# -- pickled payloads ---------------------------------------------------------------------------

def _pickled_member(archive: Archive, candidates: tuple[str, ...]) -> list[StoredTensor]:
    for relative in candidates:
        if not archive.has(relative):
            continue
        member = archive.member_path(relative)
        if not relative.endswith(".pt"):
            raise WeightError(f"{archive.source}: {member} is not a torch.save payload; "
                              "this archive predates the pickled state dict (torch < 2.3)")
        if archive.info(relative).size == 0:
            return []
        obj = load_torch_save(archive.read(relative), source=f"{archive.source}:{member}")
        if not isinstance(obj, dict):
            raise WeightError(f"{archive.source}: {member} holds a {type(obj).__name__}, expected a dict of tensors")
        out = []
        for name, value in obj.items():
            if not isinstance(value, RawTensor):
                continue  # a non-tensor constant: nothing numpy can hold
            out.append(StoredTensor(str(name), value.array, value.dtype, f"{member}:{value.storage_key}",
                                    value.is_parameter, value.dtype in RAW_BITS_DTYPES))
        return out
    return []


# -- raw records (torch 2.9+) -------------------------------------------------------------------

def _raw_payloads(archive: Archive, config_member: str, base_dir: str) -> list[StoredTensor]:
    if not archive.has(config_member):
        return []
    swap = _archive_byteorder(archive) != sys.byteorder
    flats: dict[str, np.ndarray] = {}
    out = []
    for fqn, meta in read_payload_config(archive, config_member).items():
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
            flat = flats[key] = _flat_record(archive, member, dtype, tm.dtype, where, swap)
        out.append(StoredTensor(fqn, strided_view(flat, tm, where), tm.dtype,
                                archive.member_path(member), meta.is_param, raw))
    return out


def _pickled_entry(archive: Archive, member: str, fqn: str, is_param: bool) -> list[StoredTensor]:
    # A use_pickle entry is one torch.save'd tensor (torch writes those it cannot write raw).
    full = archive.member_path(member)
    obj = load_torch_save(archive.read(member), source=f"{archive.source}:{full}")
    if not isinstance(obj, RawTensor):
        return []
    return [StoredTensor(fqn, obj.array, obj.dtype, f"{full}:{obj.storage_key}", is_param,
                         obj.dtype in RAW_BITS_DTYPES)]


def _archive_byteorder(archive: Archive) -> str:
    # torch writes "little" or "big"; archives without the member are little-endian
    if archive.has("byteorder"):
        return "big" if archive.read("byteorder", limit=16).strip() == b"big" else "little"
    return "little"


def _flat_record(archive: Archive, member: str, dtype: np.dtype, dtype_name: str, where: str,
                 swap: bool) -> np.ndarray:
    size = archive.info(member).size
    if size % dtype.itemsize:
        raise WeightError(f"{where}{size} bytes is not a whole number of {dtype_name} elements")
    if size == 0:
        return np.empty(0, dtype=dtype)
    flat = np.frombuffer(archive.buffer(member), dtype=dtype)
    if swap and dtype.itemsize > 1:
        # complex numbers swap each half; everything else swaps whole elements
        unit = dtype.itemsize // 2 if dtype.kind == "c" or dtype_name == "complex32" else dtype.itemsize
        raw = flat.view(np.uint8).reshape(-1, unit)[:, ::-1]
        flat = np.ascontiguousarray(raw).reshape(-1).view(dtype)
    flat.flags.writeable = False
    return flat


def strided_view(flat: np.ndarray, tm: TensorMeta, where: str) -> np.ndarray:
    """``as_strided`` view of a flat record, refusing views that reach past its end."""
    sizes, strides, offset = tm.sizes, tm.strides, tm.storage_offset
    if not all(isinstance(x, int) for x in (*sizes, *strides)) or isinstance(offset, SymExpr):
        raise WeightError(f"{where}weights must have static sizes, got {list(map(str, sizes))}")
    numel = 1
    for s in sizes:
        numel *= s
    if numel == 0:
        return np.empty(sizes, dtype=flat.dtype)
    if flat.size == 0:
        # torch writes empty records for tensors it could not serialize by bytes: zeros, as torch
        # does; but a record cannot make us allocate without bound
        if numel * flat.itemsize > _MAX_ZEROS_BYTES:
            raise WeightError(f"{where}an empty record for a tensor of sizes {list(sizes)}: refusing to "
                              f"allocate {numel * flat.itemsize} bytes of zeros")
        return np.zeros(sizes, dtype=flat.dtype)
    extent = offset + sum((s - 1) * st for s, st in zip(sizes, strides)) + 1
    if extent > flat.size:
        raise WeightError(
            f"{where}declares sizes {list(sizes)} strides {list(strides)} offset {offset}, needing "
            f"{extent * flat.itemsize} bytes, but the record holds only {flat.nbytes}")
    item = flat.itemsize
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=sizes, strides=[s * item for s in strides],
                                           writeable=False)
