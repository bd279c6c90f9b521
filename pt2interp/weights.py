"""Weights and constants as torch tensors.

Raw records (torch 2.9+) become flat tensors over a copy-on-write mapping of the file, then
``as_strided`` views, so tensors that share a record share storage (tied weights) and nothing
is copied. Pickled payloads (the legacy layout, torch 2.8's ``model.pt``, ``use_pickle``
entries) go only through ``torch.load(..., weights_only=True)``: no code in a ``.pt2`` runs.

Torch is imported here; nothing that merely reads a program imports this module.
"""

from __future__ import annotations

import io
import sys
import zipfile
from dataclasses import dataclass

import torch

from pt2interp import versions
from pt2interp.archive import MAX_COMPRESSION_RATIO, Archive
from pt2interp.errors import WeightError
from pt2interp.program import read_payload_config
from pt2interp.schema import SymExpr, TensorMeta


def torch_dtype(name: str, *, where: str = "") -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise WeightError(f"{where}dtype {name} does not exist in torch {torch.__version__}")
    return dt


@dataclass
class LoadedWeights:
    """What :func:`load_weights` found: state dict entries and constants, by FQN."""

    tensors: dict[str, torch.Tensor]
    constants: dict[str, object]
    parameters: set[str]


def load_weights(archive: Archive, model_name: str) -> LoadedWeights:
    if archive.layout == "legacy":
        return _load_legacy(archive)
    return _load_pt2(archive, model_name)


# -- legacy layout (torch 2.1 to 2.7) -------------------------------------------------------

def _load_legacy(archive: Archive) -> LoadedWeights:
    state = _first_pickled(archive, versions.LEGACY_STATE_DICT, "state dict")
    consts = _first_pickled(archive, versions.LEGACY_CONSTANTS, "constants")
    params = {k for k, v in state.items() if isinstance(v, torch.nn.Parameter)}
    return LoadedWeights(_plain(state), dict(_plain(consts)), params)


def _first_pickled(archive: Archive, names: tuple[str, ...], what: str) -> dict:
    for name in names:
        if archive.has(name):
            obj = load_pickled(archive, name)
            if not isinstance(obj, dict):
                raise WeightError(f"{archive.source}: {archive.member_path(name)} holds a "
                                  f"{type(obj).__name__}, expected a dict of tensors ({what})")
            return obj
    return {}


def load_pickled(archive: Archive, relative: str) -> object:
    """``torch.load(weights_only=True)`` of one member, errors naming the member."""
    data = archive.read(relative)
    where = f"{archive.source}: pickled member {archive.member_path(relative)!r}"
    _check_torch_save_zip(data, where)
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 (torch raises UnpicklingError, RuntimeError, ... for bad payloads)
        raise WeightError(f"{where} cannot be loaded safely (weights_only): "
                          f"{type(exc).__name__}: {_torch_load_reason(exc)}") from None


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
    """Refuse what torch.load would inflate or allocate unboundedly, before it runs: payloads
    that are not torch.save zips (the pre-1.6 format allocates storages of pickled sizes before
    reading them) and compressed records that would inflate absurdly (torch never compresses)."""
    if data[:4] != b"PK\x03\x04":
        raise WeightError(f"{where} is not a torch.save zip payload (raw pickles, torch's pre-1.6 format, "
                          "are not loaded)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
    except Exception as exc:  # noqa: BLE001 (zipfile raises assorted errors on mangled directories)
        raise WeightError(f"{where} is not a readable torch.save zip ({type(exc).__name__}: {exc})") from None
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED and \
                info.file_size > max(info.compress_size, 1) * MAX_COMPRESSION_RATIO:
            raise WeightError(f"{where}: record {info.filename!r} would inflate {info.compress_size} bytes to "
                              f"{info.file_size} (ratio over {MAX_COMPRESSION_RATIO}): refusing a likely zip bomb")


def _plain(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.nn.Parameter):
            v = v.detach()
        out[k] = v
    return out


# -- PT2 archive (torch 2.8+) ----------------------------------------------------------------

def _load_pt2(archive: Archive, model: str) -> LoadedWeights:
    pickled_w = versions.PT2_PICKLED_WEIGHTS.format(model)
    if archive.has(pickled_w):  # torch 2.8
        state = load_pickled(archive, pickled_w)
        pickled_c = versions.PT2_PICKLED_CONSTANTS.format(model)
        consts = load_pickled(archive, pickled_c) if archive.has(pickled_c) else {}
        if not isinstance(state, dict) or not isinstance(consts, dict):
            raise WeightError(f"{archive.source}: pickled weights of model {model!r} are not dicts")
        params = {k for k, v in state.items() if isinstance(v, torch.nn.Parameter)}
        return LoadedWeights(_plain(state), _plain(consts), params)

    tensors, params = _load_payloads(archive, versions.PT2_WEIGHTS_CONFIG.format(model), versions.PT2_WEIGHTS_DIR)
    consts, _ = _load_payloads(archive, versions.PT2_CONSTANTS_CONFIG.format(model), versions.PT2_CONSTANTS_DIR)
    return LoadedWeights(tensors, consts, params)


def _load_payloads(archive: Archive, config_member: str, base_dir: str) -> tuple[dict, set]:
    if not archive.has(config_member):
        return {}, set()
    config = read_payload_config(archive, config_member)
    big_endian = _archive_is_big_endian(archive)
    storages: dict[str, torch.Tensor] = {}
    out: dict[str, object] = {}
    params = set()
    # bytes each record must hold for the views declared on it: what a compressed record may inflate to
    needed: dict[str, int] = {}
    for meta in config.values():
        if not meta.use_pickle and meta.tensor_meta is not None:
            n = _extent_bytes(meta.tensor_meta)
            needed[meta.path_name] = max(needed.get(meta.path_name, 0), n or 0)
    zero_budget = [MAX_ZERO_FILL_BYTES]
    for fqn, meta in config.items():
        where = f"{archive.source}: {archive.member_path(base_dir + meta.path_name)} ({fqn}): "
        if meta.use_pickle or meta.tensor_meta is None:
            if meta.path_name.startswith(("custom_obj", "opaque_obj")):
                out[fqn] = OpaqueConstant(fqn, meta.path_name)
                continue
            out[fqn] = load_pickled(archive, base_dir + meta.path_name)
            continue
        tm = meta.tensor_meta
        flat = storages.get(meta.path_name)
        if flat is None:
            flat = _flat_storage(archive, base_dir + meta.path_name, tm, where, big_endian,
                                 needed[meta.path_name])
            storages[meta.path_name] = flat
        out[fqn] = view_of_storage(flat, tm, where, zero_budget)
        if meta.is_param:
            params.add(fqn)
    return out, params


def _archive_is_big_endian(archive: Archive) -> bool:
    if archive.has("byteorder"):
        return archive.read("byteorder", limit=16).strip() == b"big"
    return False


def _flat_storage(archive: Archive, member: str, tm: TensorMeta, where: str, big_endian: bool,
                  needed: int | None = None) -> torch.Tensor:
    dtype = torch_dtype(tm.dtype, where=where)
    info = archive.info(member)
    itemsize = versions.ITEMSIZE[tm.dtype]
    if info.size % itemsize:
        raise WeightError(f"{where}{info.size} bytes is not a whole number of {tm.dtype} elements")
    if info.size == 0:
        return torch.empty(0, dtype=dtype)
    if not info.stored and needed is not None and info.size > needed:
        # Stored records are mapped, not read; a compressed one is inflated into memory, so it may
        # hold no more than the tensors declared on it need (torch never compresses records).
        raise WeightError(f"{where}the compressed record declares {info.size} bytes but the tensors stored "
                          f"in it need only {needed}: refusing to inflate it")
    buf = archive.buffer(member)
    if isinstance(buf, bytes):
        buf = bytearray(buf)  # frombuffer needs a writable buffer; this is the only copy
    flat = torch.frombuffer(buf, dtype=dtype)
    if big_endian and itemsize > 1 and sys.byteorder == "little":
        flat = flat.view(torch.uint8).view(-1, itemsize).flip(1).contiguous().view(dtype).view(-1)
    return flat


# Empty records (torch writes them for fake tensors) load as zeros, as torch loads them; a file
# of a few bytes must not make that allocate without bound, so an archive's zeros are capped.
MAX_ZERO_FILL_BYTES = 1 << 30
_INT64_MAX = (1 << 63) - 1


def _extent_bytes(tm: TensorMeta) -> int | None:
    """Bytes of storage a view with static geometry reaches (0 when it holds no element)."""
    sizes, strides, offset = tm.sizes, tm.strides, tm.storage_offset
    if not all(isinstance(x, int) for x in (*sizes, *strides, offset)) or len(strides) != len(sizes):
        return None
    if any(s == 0 for s in sizes):
        return 0
    return (offset + sum((s - 1) * st for s, st in zip(sizes, strides)) + 1) * versions.ITEMSIZE.get(tm.dtype, 1)


def view_of_storage(flat: torch.Tensor, tm: TensorMeta, where: str,
                    zero_budget: list[int] | None = None) -> torch.Tensor:
    """``as_strided`` view of a flat storage, refusing views that reach past its end.

    ``zero_budget`` (a one-item list, decremented) caps the bytes empty records may allocate.
    """
    sizes, strides, offset = tm.sizes, tm.strides, tm.storage_offset
    if not all(isinstance(x, int) for x in (*sizes, *strides)) or isinstance(offset, SymExpr):
        raise WeightError(f"{where}weights must have static sizes, got {list(map(str, sizes))}")
    if len(strides) != len(sizes):
        raise WeightError(f"{where}{len(strides)} strides for {len(sizes)} sizes")
    numel = 1
    for s in sizes:
        numel *= s
    if any(x > _INT64_MAX for x in (*sizes, *strides, offset, numel)):
        raise WeightError(f"{where}sizes {list(sizes)} strides {list(strides)} offset {offset} do not fit in int64")
    if flat.numel() == 0 and numel > 0:
        # torch writes empty records for tensors it could not serialize by bytes: zeros, as torch does
        nbytes = numel * flat.element_size()
        budget = zero_budget if zero_budget is not None else [MAX_ZERO_FILL_BYTES]
        if nbytes > budget[0]:
            raise WeightError(f"{where}the record is empty and the tensor declares {nbytes} bytes of zeros, over "
                              f"the {MAX_ZERO_FILL_BYTES} bytes of zeros an archive may ask for "
                              "(pt2interp.weights.MAX_ZERO_FILL_BYTES)")
        budget[0] -= nbytes
        return torch.zeros(sizes, dtype=flat.dtype)
    if numel:
        extent = offset + sum((s - 1) * st for s, st in zip(sizes, strides)) + 1
        if extent > flat.numel():
            raise WeightError(
                f"{where}declares sizes {list(sizes)} strides {list(strides)} offset {offset}, needing "
                f"{extent * flat.element_size()} bytes, but the record holds only {flat.numel() * flat.element_size()}")
    return flat.as_strided(sizes, strides, offset)


@dataclass(frozen=True)
class OpaqueConstant:
    """A script object or opaque object constant: kept by name, never unpickled."""

    fqn: str
    path_name: str

    def __repr__(self) -> str:
        return f"<opaque constant {self.fqn} ({self.path_name}), not loaded>"
