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
from pt2interp.schema import PayloadMeta, SymExpr, TensorMeta, parse_payload_config


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
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 (torch raises UnpicklingError, RuntimeError, ... for bad payloads)
        msg = str(exc).split("\n")[0][:300]
        raise WeightError(f"{archive.source}: cannot load pickled member {archive.member_path(relative)!r} "
                          f"safely (weights_only): {type(exc).__name__}: {msg}") from None


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
            flat = _flat_storage(archive, base_dir + meta.path_name, tm, where, big_endian)
            storages[meta.path_name] = flat
        out[fqn] = view_of_storage(flat, tm, where)
        if meta.is_param:
            params.add(fqn)
    return out, params


def read_payload_config(archive: Archive, config_member: str) -> dict[str, PayloadMeta]:
    import json

    text = archive.read_text(config_member)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise WeightError(f"{archive.source}: {archive.member_path(config_member)} is not valid JSON: {exc}") from None
    return parse_payload_config(doc, archive.member_path(config_member))


def _archive_is_big_endian(archive: Archive) -> bool:
    if archive.has("byteorder"):
        return archive.read("byteorder", limit=16).strip() == b"big"
    return False


def _flat_storage(archive: Archive, member: str, tm: TensorMeta, where: str, big_endian: bool) -> torch.Tensor:
    dtype = torch_dtype(tm.dtype, where=where)
    info = archive.info(member)
    itemsize = versions.ITEMSIZE[tm.dtype]
    if info.size % itemsize:
        raise WeightError(f"{where}{info.size} bytes is not a whole number of {tm.dtype} elements")
    if info.size == 0:
        return torch.empty(0, dtype=dtype)
    buf = archive.buffer(member)
    if isinstance(buf, bytes):
        buf = bytearray(buf)  # frombuffer needs a writable buffer; this is the only copy
    flat = torch.frombuffer(buf, dtype=dtype)
    if big_endian and itemsize > 1 and sys.byteorder == "little":
        flat = flat.view(torch.uint8).view(-1, itemsize).flip(1).contiguous().view(dtype).view(-1)
    return flat


def view_of_storage(flat: torch.Tensor, tm: TensorMeta, where: str) -> torch.Tensor:
    """``as_strided`` view of a flat storage, refusing views that reach past its end."""
    sizes, strides, offset = tm.sizes, tm.strides, tm.storage_offset
    if not all(isinstance(x, int) for x in (*sizes, *strides)) or isinstance(offset, SymExpr):
        raise WeightError(f"{where}weights must have static sizes, got {list(map(str, sizes))}")
    numel = 1
    for s in sizes:
        numel *= s
    if flat.numel() == 0 and numel > 0:
        # torch writes empty records for tensors it could not serialize by bytes: zeros, as torch does
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
