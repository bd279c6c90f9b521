"""Weights and constants as torch tensors: the records of :mod:`pt2interp.payload`, materialized.

Raw records (torch 2.9+) become flat tensors over a copy-on-write mapping of the file, then
``as_strided`` views, so tensors that share a record share storage (tied weights) and nothing
is copied. Pickled payloads (the legacy layout, torch 2.8's ``model.pt``, ``use_pickle``
entries) go only through ``torch.load(..., weights_only=True)``: no code in a ``.pt2`` runs.

Torch is imported here; nothing that merely reads a program imports this module.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch

from pt2interp.archive import Archive
from pt2interp.byteorder import to_native
from pt2interp.errors import WeightError
from pt2interp.payload import OpaqueRecord, PickledRecord, Record, TensorRecord, read_payloads
from pt2interp.zipdir import ZipDirectory


def torch_dtype(name: str, *, where: str = "") -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise WeightError(f"{where}dtype {name} does not exist in torch {torch.__version__}")
    return dt


@dataclass
class LoadedWeights:
    """What :func:`read_state_tensors` found: state dict entries and constants, by FQN."""

    tensors: dict[str, torch.Tensor]
    constants: dict[str, object]
    parameters: set[str]


def read_state_tensors(archive: Archive, model_name: str) -> LoadedWeights:
    """The stored state dict and constants of ``model_name`` as tensors (the records of
    :func:`pt2interp.payload.read_payloads`, materialized)."""
    stored = read_payloads(archive, model_name, _torch_itemsize)
    params: set[str] = set()
    tensors = _materialize(archive, stored.state, params)
    constants = _materialize(archive, stored.constants, set())
    return LoadedWeights(tensors, constants, params)


def _torch_itemsize(name: str, where: str) -> int:
    return torch_dtype(name, where=where).itemsize


def _materialize(archive: Archive, records: list[Record], params: set[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    flats: dict[tuple[str, str], torch.Tensor] = {}  # one per record and dtype: tied views share it
    for record in records:
        if isinstance(record, OpaqueRecord):
            out[record.name] = OpaqueConstant(record.name, record.path_name)
            continue
        if isinstance(record, PickledRecord):
            entries = record.entries(load_pickled(archive, record.relative), archive.source)
            # a whole dict marks parameters by their type, an entry by its config
            for name, value in entries:
                if record.name is None and isinstance(value, torch.nn.Parameter):
                    params.add(name)
                    value = value.detach()
                elif record.is_parameter:
                    params.add(name)
                out[name] = value
            continue
        key = (record.relative, record.dtype)
        flat = flats.get(key)
        if flat is None:
            flat = flats[key] = _flat_record(archive, record)
        out[record.name] = _view(flat, record)
        if record.is_parameter:
            params.add(record.name)
    return out


def load_pickled(archive: Archive, relative: str) -> object:
    """``torch.load(weights_only=True)`` of one member, errors naming the member."""
    data = archive.read(relative)
    where = f"{archive.source}: pickled member {archive.member_path(relative)!r}"
    _check_torch_save_zip(data, where)
    try:
        obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 (torch raises UnpicklingError, RuntimeError, ... for bad payloads)
        raise WeightError(
            f"{where} cannot be loaded safely (weights_only): "
            f"{type(exc).__name__}: {_torch_load_reason(exc)}"
        ) from None
    _check_tensor_sizes(obj, where)
    return obj


def _torch_load_reason(exc: Exception) -> str:
    """The informative line of a torch.load error: for weights_only refusals the first lines are
    boilerplate, and the refused global is named further down ("... GLOBAL posix.system ...")."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        named = [x for x in lines if "GLOBAL" in x or "WeightsUnpickler error:" in x]
        if named:
            return named[0].split("WeightsUnpickler error:")[-1].strip()[:300]
    return lines[0][:300] if lines else ""


def _check_torch_save_zip(data: bytes, where: str) -> None:
    """Refuse what torch.load would be fooled by, or inflate without bound, before it runs: the
    checks the archive itself gets (member count, names, duplicates, encryption, local headers,
    overlapping entries, compression ratios; and a zip that starts with its first member, for
    torch.load takes anything else for a pre-1.6 raw pickle, which allocates storages of pickled
    sizes before reading them). torch.load checks no CRC: every record's is verified here."""
    payload = ZipDirectory(
        io.BytesIO(data),
        where,
        error=WeightError,
        not_a_zip="not a torch.save zip payload",
        read_in_full=True,
    )
    with payload.zip:
        payload.check_all_crcs()


_INT64_MAX = (1 << 63) - 1


def _check_tensor_sizes(obj: object, where: str) -> None:
    """torch.load makes stride-0 views of any size; one whose bytes int64 cannot count (its
    ``nbytes`` wraps around) is refused, as the numpy backend refuses it."""
    stack, seen = [(obj, None)], set()
    while stack:
        value, key = stack.pop()
        if isinstance(value, torch.Tensor):
            if value.numel() * value.element_size() > _INT64_MAX:
                raise WeightError(
                    f"{where}: tensor {key!r} has sizes {list(value.shape)}, "
                    f"{value.numel() * value.element_size()} bytes: more than int64 can count"
                )
        elif isinstance(value, (dict, list, tuple)) and id(value) not in seen:
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else ((key, v) for v in value)
            stack.extend((v, k) for k, v in items)


# -- raw records (torch 2.9+) -------------------------------------------------------------------


def _flat_record(archive: Archive, record: TensorRecord) -> torch.Tensor:
    """The whole record as a flat tensor of the record's dtype, in native byte order."""
    dtype = torch_dtype(record.dtype)
    if record.record_bytes == 0:
        return torch.empty(0, dtype=dtype)
    buf = archive.buffer(record.relative)
    if record.swap_unit > 1:
        buf = to_native(buf, record.swap_unit)
    elif isinstance(buf, bytes):
        buf = bytearray(buf)  # frombuffer needs a writable buffer; this is the only copy
    return torch.frombuffer(buf, dtype=dtype)


def _view(flat: torch.Tensor, record: TensorRecord) -> torch.Tensor:
    if record.zero_fill:
        return torch.zeros(record.sizes, dtype=flat.dtype)
    try:
        return flat.as_strided(record.sizes, record.strides, record.storage_offset)
    except RuntimeError as exc:  # what torch refuses beyond the record's checks
        raise WeightError(
            f"{record.where}cannot view sizes {list(record.sizes)} strides "
            f"{list(record.strides)}: {exc}"
        ) from None


@dataclass(frozen=True)
class OpaqueConstant:
    """A script object or opaque object constant: kept by name, never unpickled."""

    fqn: str
    path_name: str

    def __repr__(self) -> str:
        return f"<opaque constant {self.fqn} ({self.path_name}), not loaded>"
