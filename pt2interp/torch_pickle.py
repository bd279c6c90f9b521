"""Read ``torch.save`` payloads into numpy arrays without importing torch.

Since torch 1.6, ``torch.save`` writes a zip: ``<prefix>/data.pkl`` is a pickle whose tensors
refer, through persistent ids ``('storage', storage_type, key, location, numel)``, to raw
storage files ``<prefix>/data/<key>``, and ``<prefix>/byteorder`` says how those bytes are
ordered (``<prefix>`` is the first path component: ``archive`` or the saved file's stem).
``.pt2`` archives from torch 2.1-2.8 keep their state dict and constants in this format
(``serialized_state_dict.pt`` and ``serialized_constants.pt`` inside the ``.pt2`` zip).

:func:`load_torch_save` unpickles such a payload with a restricted unpickler. It resolves only
the globals in :data:`ALLOWED_GLOBALS` (the tensor and parameter rebuild functions, the storage
classes, dtypes, and ``collections.OrderedDict``) and maps them to stand-ins defined here, so
nothing from torch is imported or called; any other global raises
:class:`~pt2interp.errors.WeightError` before anything runs. The zip gets the checks of the
``.pt2`` container itself (:class:`pt2interp.zipdir.ZipDirectory`: member count, names,
duplicates, encryption, local headers, overlaps, compression ratios) before any member is
read. Storage sizes and every tensor's extent are checked against the bytes actually present
before a view is made.

>>> import zipfile
>>> from pt2interp.torch_pickle import load_torch_save
>>> with zipfile.ZipFile("fixtures/torch-2.5.1/mlp.pt2") as pt2:
...     payload = pt2.read("serialized_state_dict.pt")
>>> state = load_torch_save(payload, source="mlp.pt2:serialized_state_dict.pt")
>>> weight = state["net.0.weight"]
>>> weight.dtype, weight.shape, weight.strides, weight.is_parameter
('float32', (32, 16), (16, 1), True)
>>> weight.array.flags.writeable
False

What comes back:

* Containers as saved (``OrderedDict`` stays an ``OrderedDict``, a ``dict`` subclass), with
  :class:`RawTensor` leaves. ``torch.nn.Parameter`` gives ``is_parameter=True``.
* ``RawTensor.array`` is a **read-only** numpy view (``np.frombuffer`` + ``as_strided``): all
  tensors that view one storage share one buffer, so tied weights stay tied
  (``np.shares_memory`` holds). Copy with ``np.array(t.array)`` before writing. The one
  exception: tensors saved with torch's lazy ``conj``/``neg`` bit are materialized as copies.
* Values are in native byte order. A payload whose ``byteorder`` member says ``big`` is
  byte-swapped once per storage (a missing member means ``little``, as torch wrote before it
  recorded one). Untyped storages (torch >= 2.1 pickles newer dtypes that way) are swapped by
  the dtype of the tensors that view them, which torch itself does not do.
* dtypes numpy lacks: ``bfloat16``, ``float8_e4m3fn``, ``float8_e5m2``, ``float8_e4m3fnuz``,
  ``float8_e5m2fnuz`` and ``float8_e8m0fnu`` use the ``ml_dtypes`` type when ``ml_dtypes`` is
  importable, and otherwise hold the raw bits as ``uint16`` / ``uint8``. ``complex32`` is always
  raw ``uint32`` bits (real half in the first two bytes) and ``float4_e2m1fn_x2`` raw ``uint8``
  (two values per byte). :data:`RAW_BITS_DTYPES` lists the dtypes held as raw bits right now.

How torch 2.13 pickles each dtype: float32/64/16, bfloat16, int8/16/32/64, uint8, bool and
complex64/128 as ``_rebuild_tensor_v2`` over a typed storage class (``torch.FloatStorage``,
``torch.BFloat16Storage``, ...); every other dtype (float8_*, uint16/32/64, complex32,
float8_e8m0fnu, float4_e2m1fn_x2) as ``_rebuild_tensor_v3`` over ``torch.storage.UntypedStorage``
with the dtype as a global such as ``torch.float8_e4m3fn``.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import re
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar

import numpy as np

from .byteorder import needs_swap, swap_unit, to_native
from .errors import WeightError
from .zipdir import ZipDirectory

try:  # optional: real numpy dtypes for bfloat16 and float8
    import ml_dtypes
except ImportError:  # pragma: no cover - depends on the environment
    ml_dtypes = None

__all__ = ["ALLOWED_GLOBALS", "RAW_BITS_DTYPES", "RawTensor", "load_torch_save"]

# Torch pickles hold metadata only (~100 bytes a tensor); 64 MiB is ~600k tensors.
_MAX_PICKLE_BYTES = 64 << 20
# Copies of lazily conjugated or negated views may exceed their storage's size by this much.
_MAX_COPY_BYTES = 1 << 30
_MAX_DEPTH = 200
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True, slots=True, eq=False)
class RawTensor:
    """A tensor read without torch: numpy data plus the torch dtype name.

    ``array`` holds the values (read-only view); for bfloat16/float8 without ``ml_dtypes`` it
    holds the raw bits as uint16/uint8. ``strides`` are in elements. Tensors with the same
    ``storage_key`` view the same storage.
    """

    array: np.ndarray
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    storage_offset: int
    storage_key: str
    is_parameter: bool = False

    def __repr__(self) -> str:
        kind = "Parameter" if self.is_parameter else "RawTensor"
        return f"{kind}(dtype={self.dtype}, shape={self.shape}, storage_key={self.storage_key!r})"


# The internal objects below are frozen because the dtype and storage-type ones are shared by
# every load. (Frozen slotted dataclasses still accept pickle's BUILD through __setstate__,
# so _Unpickler.load_build refuses BUILD on them.)
@dataclass(frozen=True, slots=True)
class _DType:
    name: str
    numpy: np.dtype
    raw: bool  # numpy holds the bit pattern, not the value
    swap: int  # bytes per byte-swapped unit (pt2interp.byteorder.swap_unit)

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


def _dtype_table() -> dict[str, _DType]:
    table: dict[str, _DType] = {}

    def add(name: str, np_type: Any, *, raw: bool = False) -> None:
        dt = np.dtype(np_type)
        table[name] = _DType(name, dt, raw, swap_unit(name, dt.itemsize))

    for name in (
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
    ):
        add(name, name)
    add("complex64", np.complex64)
    add("complex128", np.complex128)
    add("complex32", np.uint32, raw=True)
    add("float4_e2m1fn_x2", np.uint8, raw=True)
    for name, bits in (
        ("bfloat16", np.uint16),
        ("float8_e4m3fn", np.uint8),
        ("float8_e5m2", np.uint8),
        ("float8_e4m3fnuz", np.uint8),
        ("float8_e5m2fnuz", np.uint8),
        ("float8_e8m0fnu", np.uint8),
    ):
        native = getattr(ml_dtypes, name, None) if ml_dtypes is not None else None
        add(name, bits if native is None else native, raw=native is None)
    return table


_DTYPES = _dtype_table()
RAW_BITS_DTYPES = frozenset(name for name, dt in _DTYPES.items() if dt.raw)


@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str
    dtype: _DType | None  # None: UntypedStorage, bytes whose tensors bring their own dtype

    @property
    def itemsize(self) -> int:
        return 1 if self.dtype is None else self.dtype.itemsize


_STORAGE_CLASSES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
_UNTYPED = _StorageType("UntypedStorage", None)

_REBUILD_FUNCTIONS = (
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
)


def _allowed_globals() -> dict[tuple[str, str], object]:
    allowed: dict[tuple[str, str], object] = {
        ("collections", "OrderedDict"): collections.OrderedDict
    }
    for name in _REBUILD_FUNCTIONS:
        allowed["torch._utils", name] = name  # bound to the unpickler in _Unpickler.find_class
    # torch < 2 pickled CUDA tensors' storages as torch.cuda.*Storage.
    for module in ("torch", "torch.cuda"):
        for name, dtype in _STORAGE_CLASSES.items():
            allowed[module, name] = _StorageType(name, _DTYPES[dtype])
    for module, name in (
        ("torch.storage", "UntypedStorage"),
        ("torch", "UntypedStorage"),
        ("torch", "_UntypedStorage"),
    ):
        allowed[module, name] = _UNTYPED
    for name, dtype in _DTYPES.items():
        allowed["torch", name] = dtype
    return allowed


_ALLOWED = _allowed_globals()
#: Every ``(module, name)`` global a payload may reference.
ALLOWED_GLOBALS = frozenset(_ALLOWED)


class _Storage:
    """The bytes of one ``data/<key>`` member, shared by every tensor that views it."""

    __slots__ = ("_flat", "_native", "_raw", "_swap", "key", "member", "nbytes", "typed")

    def __init__(self, key: str, member: str, raw: bytes | memoryview, typed: _DType | None):
        self.key, self.member, self.nbytes, self.typed = key, member, len(raw), typed
        self._raw = raw
        self._native: Any = None
        self._swap: int | None = None
        self._flat: dict[str, np.ndarray] = {}

    def elements(self, dtype: _DType, byteswap: bool, where: str) -> np.ndarray:
        """The whole storage as a flat read-only array of ``dtype``, in native byte order."""
        flat = self._flat.get(dtype.name)
        if flat is not None:
            return flat
        buffer: Any = self._raw
        if byteswap:
            # One swapped copy per storage keeps tied views tied; a second width can't share it.
            if self._swap is None:
                self._swap = dtype.swap
                self._native = _swap_bytes(self._raw, dtype.swap)
            elif self._swap != dtype.swap:
                raise WeightError(
                    f"{where}: storage {self.key!r} is viewed as {dtype.name} and as a dtype with"
                    f" {self._swap}-byte units; cannot convert it from big-endian for both"
                )
            buffer = self._native
        flat = np.frombuffer(buffer, dtype=dtype.numpy, count=self.nbytes // dtype.itemsize)
        self._flat[dtype.name] = flat
        return flat


def _swap_bytes(raw: bytes, unit: int) -> Any:
    if unit == 1:
        return raw
    swapped = to_native(raw, unit)
    swapped.flags.writeable = False
    return swapped


@dataclass(frozen=True, slots=True)
class _StorageRef:
    """What a persistent id unpickles to: a storage plus the type the pickle named."""

    storage: _Storage
    type: _StorageType


@dataclass(frozen=True, slots=True)
class _Rebuild:
    """What an allowed rebuild global unpickles to: a stand-in bound to the current load."""

    name: str
    fn: Any

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class _Unpickler(pickle._Unpickler):  # type: ignore[name-defined]
    # The pure-Python unpickler keeps its memo in a dict: the C one grows an array to the
    # largest memo index, so a 9-byte pickle can make it allocate gigabytes.
    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: BinaryIO, reader: _Reader):
        super().__init__(file, fix_imports=False, encoding="utf-8")
        self._reader = reader
        reader.unpickler = self

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            qualified = f"{module}.{name}"[:200]
            raise WeightError(
                f"refusing to unpickle global '{qualified}' in {self._reader.source}: only"
                " tensor rebuild functions and storages are allowed"
            )
        if isinstance(found, str):
            return _Rebuild(f"torch._utils.{found}", getattr(self._reader, found))
        return found

    def persistent_load(self, pid: Any) -> _StorageRef:
        return self._reader.persistent_load(pid)

    def load_build(self) -> None:
        # BUILD sets attributes, even on frozen dataclasses, and could shadow an OrderedDict's
        # methods; torch only needs it to put state_dict()._metadata on an OrderedDict.
        state = self.stack[-1] if self.stack else None
        target = self.stack[-2] if len(self.stack) > 1 else None
        if type(target) is not collections.OrderedDict or not (
            isinstance(state, dict) and set(state) <= {"_metadata"}
        ):
            raise WeightError(
                f"{self._reader.where}: refusing to set state {_short(state)} on"
                f" {_describe(target)}: only an OrderedDict's _metadata may be set"
            )
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


class _Reader:
    """State of one :func:`load_torch_save` call; its methods are the rebuild stand-ins."""

    def __init__(self, directory: ZipDirectory, prefix: str, source: str, byteswap: bool):
        self.directory, self.prefix, self.source, self.byteswap = (
            directory,
            prefix,
            source,
            byteswap,
        )
        self.where = f"{source}: {prefix}/data.pkl"
        self.storages: dict[str, _Storage] = {}
        self.unpickler: _Unpickler | None = None

    def _key_being_built(self) -> str | None:
        """The dict key the tensor being rebuilt will be stored under, for error messages.

        A pickled dict pushes each key just before its value, so while a rebuild call runs the
        key is the nearest item below the pending rebuild calls on the unpickler's stacks (a
        Parameter's tensor is rebuilt inside its argument tuple, one stack further down).
        Tensors that are not dict values have no key."""
        stacks = (
            (self.unpickler.stack, *reversed(self.unpickler.metastack)) if self.unpickler else ()
        )
        for stack in stacks:
            for item in reversed(stack):
                if isinstance(item, str):
                    return item
                if not isinstance(item, _Rebuild):
                    return None
        return None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and _text(pid[0]) == "storage"):
            raise WeightError(f"{self.where}: unsupported persistent id {_short(pid)}")
        _, stype, key, _location, numel = pid
        key = _text(key)
        if key is None or not _STORAGE_KEY.fullmatch(key):
            raise WeightError(f"{self.where}: invalid storage key {_short(pid[2])}")
        if not isinstance(stype, _StorageType):
            raise WeightError(
                f"{self.where}: unknown storage type {_short(stype)} for storage {key!r}"
            )
        if not _is_int(numel) or numel < 0:
            raise WeightError(f"{self.where}: storage {key!r} has invalid size {_short(numel)}")
        nbytes = numel * stype.itemsize
        storage = self.storages.get(key)
        if storage is None:
            storage = self._load_storage(key, stype, numel, nbytes)
            self.storages[key] = storage
        elif storage.nbytes != nbytes or (
            stype.dtype is not None and storage.typed not in (None, stype.dtype)
        ):
            raise WeightError(
                f"{self.where}: storage {key!r} is referenced as {stype.name} of {numel}"
                f" elements, inconsistent with an earlier reference"
            )
        elif storage.typed is None:
            storage.typed = stype.dtype
        return _StorageRef(storage, stype)

    def _load_storage(self, key: str, stype: _StorageType, numel: int, nbytes: int) -> _Storage:
        member = f"{self.prefix}/data/{key}"
        info = self.directory.members.get(member)
        if info is None:
            raise WeightError(
                f"{self.source}: storage {key!r} has no member {member} in the archive"
            )
        if info.size < nbytes:
            raise WeightError(
                f"{self.source}: {member} holds {info.size} bytes, but its {stype.name}"
                f" declares {numel} elements ({nbytes} bytes): storage file too short"
            )
        raw = self.directory.read(member)  # whole, so that its CRC is checked
        return _Storage(
            key, member, memoryview(raw)[:nbytes] if len(raw) > nbytes else raw, stype.dtype
        )

    def _tensor(
        self, ref: Any, offset: Any, size: Any, stride: Any, dtype: _DType, metadata: Any
    ) -> RawTensor:
        if not isinstance(ref, _StorageRef):
            raise WeightError(f"{self.where}: a tensor rebuild got {_short(ref)}, not a storage")
        storage = ref.storage
        key = self._key_being_built()
        tensor = f"tensor {_short(key)} " if key is not None else "tensor "
        where = f"{self.source}: {tensor}on storage {storage.key!r} ({storage.member})"
        shape, strides = _int_tuple(size, "size", where), _int_tuple(stride, "stride", where)
        if len(shape) != len(strides):
            raise WeightError(f"{where}: size {shape} and stride {strides} differ in length")
        if not _is_int(offset) or offset < 0:
            raise WeightError(f"{where}: invalid storage offset {_short(offset)}")
        if any(s < 0 for s in shape) or any(s < 0 for s in strides):
            raise WeightError(f"{where}: negative size or stride (size {shape}, stride {strides})")
        flat = storage.elements(dtype, self.byteswap, where)
        # An empty tensor reads nothing, and torch saves empty slices with any offset.
        empty = 0 in shape
        end = 0 if empty else offset + sum((n - 1) * s for n, s in zip(shape, strides)) + 1
        if end > flat.size:
            raise WeightError(
                f"{where}: {dtype.name} view with offset {offset}, size {shape}, stride {strides}"
                f" needs {end} elements but the storage holds {flat.size}: view past the end"
            )
        # as_strided rebuilds the dtype from its array-interface string, which fails for some
        # ml_dtypes types ('<f1'): stride raw void items, then view them as the dtype.
        items = flat.view(np.dtype((np.void, dtype.itemsize)))
        try:
            array = np.lib.stride_tricks.as_strided(
                items[offset:] if not empty else items[:0],
                shape,
                tuple(s * dtype.itemsize for s in strides),
                writeable=False,
            ).view(dtype.numpy)
        except ValueError as exc:
            raise WeightError(
                f"{where}: cannot view size {shape} stride {strides}: {exc}"
            ) from None
        array = _apply_metadata(array, dtype, metadata, where, storage.nbytes)
        return RawTensor(array, dtype.name, shape, strides, offset, storage.key)

    # Stand-ins for torch._utils; argument lists follow torch 2.13, older pickles pass fewer.
    def _rebuild_tensor_v2(
        self,
        storage: Any,
        storage_offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any = False,
        backward_hooks: Any = None,
        metadata: Any = None,
    ) -> RawTensor:
        stype = storage.type if isinstance(storage, _StorageRef) else None
        dtype = _DTYPES["uint8"] if stype is None or stype.dtype is None else stype.dtype
        return self._tensor(storage, storage_offset, size, stride, dtype, metadata)

    def _rebuild_tensor_v3(
        self,
        storage: Any,
        storage_offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        backward_hooks: Any,
        dtype: Any,
        metadata: Any = None,
    ) -> RawTensor:
        if not isinstance(dtype, _DType):
            raise WeightError(f"{self.where}: _rebuild_tensor_v3 got dtype {_short(dtype)}")
        return self._tensor(storage, storage_offset, size, stride, dtype, metadata)

    def _rebuild_parameter(self, data: Any, requires_grad: Any, backward_hooks: Any) -> RawTensor:
        if not isinstance(data, RawTensor):
            raise WeightError(f"{self.where}: a Parameter wraps {_short(data)}, not a tensor")
        return dataclasses.replace(data, is_parameter=True)

    def _rebuild_parameter_with_state(
        self, data: Any, requires_grad: Any, backward_hooks: Any, state: Any
    ) -> RawTensor:
        # The state is Python attributes of the Parameter (e.g. dynamo markers): not data.
        return self._rebuild_parameter(data, requires_grad, backward_hooks)


def _apply_metadata(
    array: np.ndarray, dtype: _DType, metadata: Any, where: str, storage_bytes: int
) -> np.ndarray:
    """Materialize torch's lazy conj/neg bits, which numpy views can't express. The copy is as
    large as the view, which a stride of 0 makes as large as it likes: beyond its storage's
    bytes (or _MAX_COPY_BYTES, if more) it is refused."""
    if metadata is None:
        return array
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise WeightError(f"{where}: invalid tensor metadata {_short(metadata)}")
    flags = {k for k, v in metadata.items() if v}
    unknown = flags - {"conj", "neg"}
    if unknown:
        raise WeightError(f"{where}: unsupported tensor metadata {sorted(unknown)}")
    if flags and dtype.raw:
        raise WeightError(f"{where}: cannot apply {sorted(flags)} to {dtype.name} held as raw bits")
    if flags and array.nbytes > max(storage_bytes, _MAX_COPY_BYTES):
        raise WeightError(
            f"{where}: applying {sorted(flags)} would copy the view's {array.nbytes} bytes, "
            f"more than its storage's {storage_bytes} (a view repeating its storage)"
        )
    try:
        if "conj" in flags:
            if dtype.numpy.kind != "c":
                raise WeightError(f"{where}: conj bit on a non-complex {dtype.name} tensor")
            array = np.conj(array)
        if "neg" in flags:
            array = np.negative(array)
    except TypeError as exc:
        raise WeightError(f"{where}: cannot apply {sorted(flags)} to {dtype.name}: {exc}") from None
    if flags:
        array.flags.writeable = False
    return array


def load_torch_save(
    data: bytes | bytearray | memoryview | BinaryIO, *, source: str = "<bytes>"
) -> object:
    """Unpickle a torch.save zip payload into plain Python containers with RawTensor leaves.

    ``data`` is the payload's bytes or a seekable binary file; ``source`` names it in errors.
    Raises :class:`~pt2interp.errors.WeightError` for anything that is not a well-formed
    torch.save archive made only of tensors, parameters and plain containers, and
    :class:`~pt2interp.errors.LimitError` for a zip of more members than
    ``pt2interp.limits.current().max_archive_members``.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        if bytes(data[:1]) == b"\x80":
            raise WeightError(
                f"{source}: a raw pickle, the legacy (torch < 1.6) torch.save"
                " format, which is not supported"
            )
        data = io.BytesIO(data)
    directory = ZipDirectory(
        data, source, error=WeightError, not_a_zip="not a torch.save zip archive", read_in_full=True
    )
    with directory.zip:
        prefix = _find_prefix(directory, source)
        byteswap = needs_swap(_byteorder(directory, prefix, source))
        member = f"{prefix}/data.pkl"
        size = directory.members[member].size
        if size > _MAX_PICKLE_BYTES:
            raise WeightError(
                f"{source}: {member} is {size} bytes, over the"
                f" {_MAX_PICKLE_BYTES} byte limit for tensor metadata"
            )
        pickled = directory.read(member)
        reader = _Reader(directory, prefix, source, byteswap)
        try:
            result = _Unpickler(io.BytesIO(pickled), reader).load()
        except WeightError:
            raise
        # Whatever pickle or a stand-in called with the wrong arguments raises means bad data.
        except Exception as exc:  # noqa: BLE001
            raise WeightError(
                f"{source}: {member} is not a valid torch pickle ({type(exc).__name__}: {exc})"
            ) from None
    _check_result(result, f"{source}: {member}")
    return result


def _find_prefix(directory: ZipDirectory, source: str) -> str:
    pickles = [n for n in directory.members if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        found = "no" if not pickles else f"{len(pickles)}"
        raise WeightError(
            f"{source}: {found} <prefix>/data.pkl members; expected exactly one in a"
            " torch.save archive"
        )
    return pickles[0][: -len("/data.pkl")]


def _byteorder(directory: ZipDirectory, prefix: str, source: str) -> str:
    member = f"{prefix}/byteorder"
    info = directory.members.get(member)
    if info is None:
        return "little"
    if info.size > 16:
        raise WeightError(f"{source}: {member} is {info.size} bytes; expected little or big")
    order = directory.read(member).decode("ascii", "replace").strip()
    if order not in ("little", "big"):
        raise WeightError(f"{source}: {member} says {order!r}; expected 'little' or 'big'")
    return order


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield value
        # OrderedDict keeps attributes set by BUILD (state_dict()._metadata): check them too.
        attributes = getattr(node, "__dict__", None)
        if attributes:
            yield from attributes.values()
    else:
        yield from node


_LEAVES = (type(None), bool, int, float, str, bytes, bytearray, RawTensor)
_CONTAINERS = (dict, list, tuple, set, frozenset)


def _check_result(root: Any, where: str) -> None:
    """Refuse cycles, nesting deeper than _MAX_DEPTH and anything but containers and leaves.

    Iterative, and linear in the number of distinct containers even when a pickle shares one
    container many times (heights are memoized), so hostile shapes cannot exhaust the stack.
    """

    def check(obj: Any) -> bool:
        if isinstance(obj, _LEAVES):
            return False
        if isinstance(obj, _CONTAINERS):
            return True
        raise WeightError(
            f"{where}: unexpected {_describe(obj)} in the result; only"
            " containers, numbers, strings and tensors are supported"
        )

    if not check(root):
        return
    heights: dict[int, int] = {}
    path: list[list[Any]] = [[root, _children(root), 0]]  # node, children left, tallest child
    on_path = {id(root)}
    while path:
        frame = path[-1]
        for child in frame[1]:
            if not check(child):
                continue
            if id(child) in on_path:
                raise WeightError(f"{where}: the unpickled data contains a reference cycle")
            height = heights.get(id(child))
            if height is None:
                if len(path) >= _MAX_DEPTH:
                    raise WeightError(f"{where}: containers nest more than {_MAX_DEPTH} deep")
                path.append([child, _children(child), 0])
                on_path.add(id(child))
                break
            if len(path) + height > _MAX_DEPTH:
                raise WeightError(f"{where}: containers nest more than {_MAX_DEPTH} deep")
            frame[2] = max(frame[2], height)
        else:
            path.pop()
            on_path.discard(id(frame[0]))
            heights[id(frame[0])] = frame[2] + 1
            if path:
                path[-1][2] = max(path[-1][2], frame[2] + 1)


def _describe(obj: Any) -> str:
    if isinstance(obj, _DType):
        return f"bare dtype torch.{obj.name} outside a tensor"
    if isinstance(obj, _StorageRef):
        return f"bare storage {obj.storage.key!r} outside a tensor"
    if isinstance(obj, (_StorageType, _Rebuild)):
        return f"bare global {obj.name}"
    if isinstance(obj, type):
        return f"class {obj.__module__}.{obj.__qualname__}"
    return f"{type(obj).__name__} object"


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):  # pickles written by Python 2 torch
        return value.decode("ascii", "replace")
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value: Any, what: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(_is_int(v) for v in value):
        raise WeightError(f"{where}: tensor {what} must be a tuple of ints, got {_short(value)}")
    return tuple(value)


def _short(value: Any) -> str:
    # reprlib stops early, so hostile huge or deep values cost little to describe.
    return _REPR.repr(value)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
