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
from dataclasses import dataclass

import torch

from pt2interp import versions
from pt2interp.archive import Archive
from pt2interp.errors import WeightError
from pt2interp.numpy_weights import MAX_ZERO_FILL_BYTES, bytes_needed, check_record, check_view
from pt2interp.program import read_payload_config
from pt2interp.schema import TensorMeta
from pt2interp.zipdir import ZipDirectory


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
                raise WeightError(
                    f"{archive.source}: {archive.member_path(name)} holds a "
                    f"{type(obj).__name__}, expected a dict of tensors ({what})"
                )
            return obj
    return {}


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

    tensors, params = _load_payloads(
        archive, versions.PT2_WEIGHTS_CONFIG.format(model), versions.PT2_WEIGHTS_DIR
    )
    consts, _ = _load_payloads(
        archive, versions.PT2_CONSTANTS_CONFIG.format(model), versions.PT2_CONSTANTS_DIR
    )
    return LoadedWeights(tensors, consts, params)


def _load_payloads(archive: Archive, config_member: str, base_dir: str) -> tuple[dict, set]:
    if not archive.has(config_member):
        return {}, set()
    config = read_payload_config(archive, config_member)
    big_endian = _archive_is_big_endian(archive)
    storages: dict[str, torch.Tensor] = {}
    out: dict[str, object] = {}
    params = set()
    needed = bytes_needed(config)
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
            flat = _flat_storage(
                archive, base_dir + meta.path_name, tm, where, big_endian, needed[meta.path_name]
            )
            storages[meta.path_name] = flat
        out[fqn] = view_of_storage(flat, tm, where, zero_budget)
        if meta.is_param:
            params.add(fqn)
    return out, params


def _archive_is_big_endian(archive: Archive) -> bool:
    if archive.has("byteorder"):
        return archive.read("byteorder", limit=16).strip() == b"big"
    return False


def _flat_storage(
    archive: Archive,
    member: str,
    tm: TensorMeta,
    where: str,
    big_endian: bool,
    needed: int | None = None,
) -> torch.Tensor:
    dtype = torch_dtype(tm.dtype, where=where)
    itemsize = versions.ITEMSIZE[tm.dtype]
    if check_record(archive, member, itemsize, tm.dtype, needed, where).size == 0:
        return torch.empty(0, dtype=dtype)
    buf = archive.buffer(member)
    if isinstance(buf, bytes):
        buf = bytearray(buf)  # frombuffer needs a writable buffer; this is the only copy
    flat = torch.frombuffer(buf, dtype=dtype)
    if big_endian and itemsize > 1 and sys.byteorder == "little":
        flat = flat.view(torch.uint8).view(-1, itemsize).flip(1).contiguous().view(dtype).view(-1)
    return flat


def view_of_storage(
    flat: torch.Tensor, tm: TensorMeta, where: str, zero_budget: list[int] | None = None
) -> torch.Tensor:
    """``as_strided`` view of a flat storage, refusing views that reach past its end (the
    checks of :func:`pt2interp.numpy_weights.check_view`, which ``zero_budget`` is passed to)."""
    budget = zero_budget if zero_budget is not None else [MAX_ZERO_FILL_BYTES]
    numel = check_view(tm, flat.numel(), flat.element_size(), where, budget)
    if numel and flat.numel() == 0:
        return torch.zeros(tm.sizes, dtype=flat.dtype)
    try:
        return flat.as_strided(tm.sizes, tm.strides, tm.storage_offset)
    except RuntimeError as exc:  # what torch refuses beyond check_view's rules
        raise WeightError(
            f"{where}cannot view sizes {list(tm.sizes)} strides {list(tm.strides)}: {exc}"
        ) from None


@dataclass(frozen=True)
class OpaqueConstant:
    """A script object or opaque object constant: kept by name, never unpickled."""

    fqn: str
    path_name: str

    def __repr__(self) -> str:
        return f"<opaque constant {self.fqn} ({self.path_name}), not loaded>"
