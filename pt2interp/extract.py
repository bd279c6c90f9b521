"""Take the weights out of a ``.pt2``: as tensors, as a safetensors file, or into your own module.

* :func:`extract_weights` returns ``{name: tensor}`` keyed like the exporting module's
  ``state_dict()``, as torch tensors (``backend="torch"``) or numpy arrays
  (``backend="numpy"``, which never imports torch, legacy archives included).
* :func:`save_safetensors` writes them to a ``.safetensors`` file without torch.
* :func:`load_weights` copies them (from a ``.pt2`` or a ``.safetensors``) into a handwritten
  ``nn.Module``, renaming where the names differ, after checking every shape and dtype.

>>> import pt2interp, importlib.resources as r
>>> path = r.files("pt2interp.examples") / "tiny_mlp.pt2"
>>> w = pt2interp.extract_weights(path, backend="numpy")
>>> list(w)[:2], w["fc1.weight"].shape, w.dtypes["fc1.weight"]
(['fc1.weight', 'fc1.bias'], (32, 8), 'float32')

Importing this module does not import torch; only the torch backend and :func:`load_weights` do.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from pt2interp import jsontext
from pt2interp.errors import WeightError
from pt2interp.kinds import InputKind
from pt2interp.program import Program, read_program

if TYPE_CHECKING:
    import torch

__all__ = [
    "LoadReport",
    "LoadWeightsError",
    "Mismatch",
    "NumpyWeights",
    "SavedWeights",
    "extract_weights",
    "load_safetensors",
    "load_weights",
    "numpy_to_torch",
    "save_safetensors",
]

ALIASES_KEY = "pt2interp.aliases"  # safetensors metadata: {alias name: name written}


# ----------------------------------------------------------------------------------------------
# Choosing entries (shared by both backends)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    name: str
    value: Any
    kind: str  # parameter, buffer, non_persistent_buffer, constant


def _select(
    program: Program,
    state: list[tuple[str, Any, bool]],
    constants: list[tuple[str, Any, bool]],
    include_buffers: bool,
    include_constants: bool,
) -> list[_Entry]:
    """Entries in stored order: the stored state dict (parameters and persistent buffers, all of
    them, also names the graph signature leaves out), then the stored constants if asked for.

    ``state``/``constants`` hold ``(name, value, is_parameter)``.
    """
    sig = program.signature
    param_names = {s.target for s in sig.inputs_of(InputKind.PARAMETER)}
    buffer_names = {s.target for s in sig.inputs_of(InputKind.BUFFER)}
    out = []
    for name, value, is_param in state:
        if is_param or name in param_names:
            out.append(_Entry(name, value, "parameter"))
        elif include_buffers:
            out.append(_Entry(name, value, "buffer"))
    if include_constants:
        taken = {e.name for e in out}
        for name, value, _ in constants:
            if name not in taken:
                kind = "non_persistent_buffer" if name in buffer_names else "constant"
                out.append(_Entry(name, value, kind))
    return out


# ----------------------------------------------------------------------------------------------
# extract_weights
# ----------------------------------------------------------------------------------------------


class NumpyWeights(dict):
    """``{name: np.ndarray}`` plus what numpy alone cannot say about each array.

    ``dtypes``: the torch dtype name of each entry (``"bfloat16"`` for an array of raw
    ``uint16`` bits); ``raw_bits``: names whose arrays hold bit patterns (bfloat16/float8
    without ``ml_dtypes``); ``kinds``: ``parameter``, ``buffer``, ``non_persistent_buffer`` or
    ``constant``; ``storages``: a key equal for entries that view one stored storage.
    """

    def __init__(self):
        super().__init__()
        self.dtypes: dict[str, str] = {}
        self.raw_bits: set[str] = set()
        self.kinds: dict[str, str] = {}
        self.storages: dict[str, str] = {}

    def to_torch(self) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` in the dtypes :attr:`dtypes` names (copies; see
        :func:`numpy_to_torch`)."""
        return {name: numpy_to_torch(array, self.dtypes.get(name)) for name, array in self.items()}


def extract_weights(
    path: str | os.PathLike | BinaryIO,
    backend: str = "torch",
    include_buffers: bool = True,
    include_constants: bool = False,
    *,
    model: str | None = None,
) -> dict:
    """``{name: tensor}``: parameters, persistent buffers (``include_buffers``) and, with
    ``include_constants``, tensor constants and non-persistent buffers (both are stored apart
    from the state dict). Keys and order are the stored state dict's, so the result equals the
    exporting module's ``state_dict()``; tied weights share storage.

    ``backend="torch"``: torch tensors over a copy-on-write mapping of the file (or from
    ``torch.load(weights_only=True)`` for pickled layouts). ``backend="numpy"``: a
    :class:`NumpyWeights` of read-only arrays, read without importing torch (see
    :mod:`pt2interp.numpy_weights`); bfloat16 and float8 arrays hold raw bits unless
    ``ml_dtypes`` is installed, and ``result.dtypes`` names every entry's torch dtype.
    Script-object constants are never returned.

    >>> import pt2interp, importlib.resources as r
    >>> sd = pt2interp.extract_weights(r.files("pt2interp.examples") / "tiny_mlp.pt2")
    >>> sd["fc1.weight"].shape, sd["fc1.weight"].dtype
    (torch.Size([32, 8]), torch.float32)
    """
    if backend not in ("torch", "numpy"):
        raise ValueError(f"backend must be 'torch' or 'numpy', got {backend!r}")
    # an outline: the weights need only the signature, never a node's arguments or symbolic values
    program = read_program(path, model=model, outline=True)
    if backend == "numpy":
        return _numpy_weights(program, include_buffers, include_constants)
    return _torch_weights(program, include_buffers, include_constants)


def _numpy_weights(
    program: Program, include_buffers: bool, include_constants: bool
) -> NumpyWeights:
    from pt2interp.numpy_weights import read_stored_tensors

    state, constants = read_stored_tensors(program.archive, program.model_name)
    entries = _select(
        program,
        [(t.name, t, t.is_parameter) for t in state],
        [(t.name, t, False) for t in constants],
        include_buffers,
        include_constants,
    )
    out = NumpyWeights()
    for e in entries:
        t = e.value
        out[e.name] = t.array
        out.dtypes[e.name] = t.dtype
        out.kinds[e.name] = e.kind
        out.storages[e.name] = t.storage
        if t.raw_bits:
            out.raw_bits.add(e.name)
    return out


def _torch_weights(program: Program, include_buffers: bool, include_constants: bool) -> dict:
    import torch

    from pt2interp.weights import read_state_tensors

    w = read_state_tensors(program.archive, program.model_name)
    state = [(k, v, k in w.parameters) for k, v in w.tensors.items() if isinstance(v, torch.Tensor)]
    consts = [(k, v, False) for k, v in w.constants.items() if isinstance(v, torch.Tensor)]
    return {
        e.name: e.value for e in _select(program, state, consts, include_buffers, include_constants)
    }


def numpy_to_torch(array: np.ndarray, dtype: str | None = None) -> torch.Tensor:
    """A torch tensor with ``array``'s values (a copy: numpy-backend arrays are read-only
    views of the file), in torch dtype ``dtype`` (a name, as ``NumpyWeights.dtypes`` gives).

    ``torch.from_numpy`` refuses ``ml_dtypes`` arrays (bfloat16, float8) and cannot know that
    a ``uint16`` array holds bfloat16 bits; this takes both, with or without ``ml_dtypes``
    installed. Without ``dtype`` the array's own dtype decides.

    >>> import pt2interp, importlib.resources as r
    >>> path = r.files("pt2interp.examples") / "tiny_mlp.pt2"
    >>> w = pt2interp.extract_weights(path, backend="numpy")
    >>> t = numpy_to_torch(w["fc1.weight"], w.dtypes["fc1.weight"])
    >>> t.dtype, tuple(t.shape)
    (torch.float32, (32, 8))
    >>> numpy_to_torch(np.array([0x3F80], dtype=np.uint16), "bfloat16")  # raw bits of 1.0
    tensor([1.], dtype=torch.bfloat16)
    """
    import torch

    from pt2interp.weights import torch_dtype

    name = dtype or array.dtype.name
    target = torch_dtype(name, where="numpy_to_torch: ")
    copy = np.array(array)
    if copy.dtype.name not in _TORCH_READS_FROM_NUMPY:
        # ml_dtypes types and other bit containers: hand torch the bits as signed integers of
        # the same width (every torch reads those), then reinterpret them
        bits = _SIGNED_OF_WIDTH.get(copy.dtype.itemsize)
        if bits is None:
            raise WeightError(f"numpy_to_torch: cannot hand numpy dtype {copy.dtype} to torch")
        copy = copy.view(bits)
    tensor = torch.from_numpy(copy)
    if tensor.dtype == target:
        return tensor
    if tensor.element_size() != target.itemsize:
        raise WeightError(
            f"numpy_to_torch: an array of {array.dtype} ({array.dtype.itemsize} bytes an element) "
            f"cannot hold {name} ({target.itemsize} bytes an element)"
        )
    return tensor.view(target)


# numpy dtypes torch.from_numpy takes as they are (unsigned 16/32/64 only since torch 2.3)
_TORCH_READS_FROM_NUMPY = frozenset(
    {
        "bool",
        "uint8",
        "int8",
        "int16",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    }
)
_SIGNED_OF_WIDTH = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


# ----------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------

# torch dtype name → safetensors dtype code
SAFETENSORS_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "complex64": "C64",
}


@dataclass(frozen=True)
class SavedWeights:
    """What :func:`save_safetensors` wrote: the names stored, the aliases left out (restored by
    :func:`load_weights` / :func:`load_safetensors`), the metadata and the file size."""

    path: str
    tensors: list[str]
    aliases: dict[str, str]
    metadata: dict[str, str]
    nbytes: int


def save_safetensors(
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    *,
    model: str | None = None,
    include_buffers: bool = True,
    include_constants: bool = False,
) -> SavedWeights:
    """Write a ``.pt2``'s weights to a safetensors file, without importing torch.

    The metadata records ``source`` (file name), ``torch_version``, ``schema_version`` and
    ``layout``. safetensors refuses tensors that share storage, so of names that are the very
    same tensor (tied weights) only the alphabetically first is written, as
    ``safetensors.torch.save_model`` does, and ``metadata["pt2interp.aliases"]`` maps each
    left-out name to it: :func:`load_weights` restores both names, and
    ``safetensors.torch.load_model`` accepts the file too.

    >>> import pt2interp, importlib.resources as r, tempfile, os
    >>> from pt2interp.extract import save_safetensors
    >>> out = os.path.join(tempfile.mkdtemp(), "tiny_mlp.safetensors")
    >>> saved = save_safetensors(r.files("pt2interp.examples") / "tiny_mlp.pt2", out)
    >>> len(saved.tensors), saved.metadata["layout"]
    (6, 'pt2')
    """
    program = read_program(path_in, model=model, outline=True)  # weights need no node arguments
    weights = _numpy_weights(program, include_buffers, include_constants)
    kept, aliases = _dedupe_aliases(weights)
    metadata = {
        "format": "pt",  # what safetensors.torch writes; transformers and others check it
        "source": Path(str(program.source)).name,
        "torch_version": program.torch_version or "unknown",
        "schema_version": ".".join(map(str, program.schema_version)),
        "layout": program.layout,
    }
    if aliases:
        metadata[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    tensors = []
    for name in kept:
        code = SAFETENSORS_DTYPES.get(weights.dtypes[name])
        if code is None:
            raise WeightError(
                f"{program.source}: {name} has dtype {weights.dtypes[name]}, "
                f"which safetensors cannot store"
            )
        tensors.append((name, code, weights[name]))
    nbytes = _write_safetensors(Path(path_out), tensors, metadata)
    return SavedWeights(str(path_out), kept, aliases, metadata, nbytes)


def _dedupe_aliases(weights: NumpyWeights) -> tuple[list[str], dict[str, str]]:
    """Names to write and ``{alias: written name}`` for names that are the same tensor."""
    groups: dict[tuple, list[str]] = {}
    for name, arr in weights.items():
        key = (
            weights.storages[name],
            weights.dtypes[name],
            arr.shape,
            arr.strides,
            arr.__array_interface__["data"][0],
        )
        groups.setdefault(key, []).append(name)
    aliases = {}
    for names in groups.values():
        keep = min(names)  # the name safetensors.torch.save_model would keep
        aliases.update({n: keep for n in names if n != keep})
    return [n for n in weights if n not in aliases], aliases


def _write_safetensors(
    path: Path, tensors: list[tuple[str, str, np.ndarray]], metadata: dict[str, str]
) -> int:
    # The format: 8-byte little-endian header length, a JSON header (padded with spaces to a
    # multiple of 8), then every tensor's C-order little-endian bytes, back to back, in order.
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, code, arr in tensors:
        header[name] = {
            "dtype": code,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, _, arr in tensors:
            flat = np.ascontiguousarray(arr).reshape(-1)
            if sys.byteorder == "big" and flat.dtype.itemsize > 1:
                flat = flat.byteswap()
            f.write(flat.view(np.uint8).data)
    os.replace(tmp, path)
    return 8 + len(raw) + offset


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file as ``{name: tensor}``, with the aliases :func:`save_safetensors`
    left out restored (they share storage with the name written)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path), device=device)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    try:
        aliases = jsontext.loads(metadata.get(ALIASES_KEY, "{}"))
    except ValueError:
        raise WeightError(f"{path}: metadata {ALIASES_KEY!r} is not valid JSON") from None
    for alias, written in aliases.items():
        if written not in tensors:
            raise WeightError(
                f"{path}: alias {alias!r} points at {written!r}, which the file does not hold"
            )
        tensors[alias] = tensors[written]
    return tensors


# ----------------------------------------------------------------------------------------------
# load_weights
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    """A tensor whose shape or dtype differs: the module's name, the source's, both values."""

    target: str
    source: str
    expected: Any  # the module's shape or dtype
    got: Any  # the source's

    def __str__(self) -> str:
        via = "" if self.source == self.target else f" (from {self.source})"
        return f"{self.target}{via}: module has {self.expected}, source has {self.got}"


@dataclass
class LoadReport:
    """What :func:`load_weights` did or would do.

    ``matched``: module names filled by the same name; ``renamed``: source name → module name;
    ``tied``: module names filled through a tied name (the same tensor in the module, e.g.
    ``head.weight`` is ``tok_emb.weight``) → that name; ``missing``: module names nothing fills;
    ``unexpected``: source names with no place (or whose place another source took);
    ``shape_mismatches`` / ``dtype_mismatches``; ``applied``: whether the module was written.
    """

    source: str
    matched: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatches: list[Mismatch] = field(default_factory=list)
    dtype_mismatches: list[Mismatch] = field(default_factory=list)
    applied: bool = False

    @property
    def ok(self) -> bool:
        """No gaps at all: every module tensor filled, every source tensor used, all fitting."""
        return not (
            self.missing or self.unexpected or self.shape_mismatches or self.dtype_mismatches
        )

    def __str__(self) -> str:
        lines = [
            f"weights from {self.source}: {len(self.matched)} matched by name, "
            f"{len(self.renamed)} renamed, {len(self.tied)} tied, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, "
            f"{len(self.shape_mismatches)} shape and {len(self.dtype_mismatches)} dtype mismatches"
            + ("" if self.applied else "; the module was not changed")
        ]
        for title, items in (
            ("shape mismatch", self.shape_mismatches),
            ("dtype mismatch", self.dtype_mismatches),
            ("missing (in the module, not in the source)", self.missing),
            ("unexpected (in the source, nowhere in the module)", self.unexpected),
        ):
            lines += [f"  {title}: {item}" for item in items]
        return "\n".join(lines)


class LoadWeightsError(WeightError):
    """:func:`load_weights` refused to touch the module; ``report`` says why, in full."""

    def __init__(self, report: LoadReport):
        self.report = report
        super().__init__(str(report))


Rename = Mapping[str, str] | Callable[[str], "str | None"] | Iterable[tuple[str, str]]


def load_weights(
    module: torch.nn.Module,
    path: str | os.PathLike | Mapping,
    strict: bool = True,
    rename: Rename | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> LoadReport:
    """Copy weights into ``module`` from a ``.pt2``, a ``.safetensors`` file or a
    ``{name: tensor}`` mapping, and return a :class:`LoadReport`.

    Each source tensor goes to the module tensor of the same ``state_dict()`` name, else to
    the name ``rename`` gives it:

    * a dict: ``{"fc.weight": "head.weight"}``; keys may also be module prefixes
      (``{"layer1.0": "stages.0.blocks.0"}``), the longest matching prefix wins;
    * a callable: ``lambda name: name.replace("fc.", "head.")`` (None: no place);
    * a list of regex substitutions applied in order: ``[(r"^layer(\\d)\\.", r"stage\\1.")]``.

    Every shape and dtype is checked before the module is touched. A shape or dtype mismatch
    always raises :class:`LoadWeightsError` (with the full report) and leaves the module
    unchanged; with ``strict=True`` so does any missing or unexpected name. Values are copied
    into the module's own tensors (tied module parameters stay tied). ``dtype`` converts
    floating-point weights, and the module tensors receiving them, to that dtype; ``device``
    moves the module tensors receiving weights there.

    >>> import torch, pt2interp, importlib.resources as r
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
    ...                           torch.nn.ReLU(), torch.nn.Linear(32, 16))
    >>> report = pt2interp.load_weights(net, r.files("pt2interp.examples") / "tiny_mlp.pt2",
    ...                                 rename={"fc1": "0", "fc2": "2", "fc3": "4"})
    >>> len(report.renamed), report.missing, report.applied
    (6, [], True)
    """
    import torch

    sources, label = _source_tensors(path)
    targets = module.state_dict(keep_vars=True)
    report = LoadReport(label)
    plan = _plan(sources, targets, _renamer(rename), report)
    for target, src_name in plan.items():
        src, tgt = sources[src_name], targets[target]
        if tuple(src.shape) != tuple(tgt.shape):
            report.shape_mismatches.append(
                Mismatch(target, src_name, list(tgt.shape), list(src.shape))
            )
        # with ``dtype``, floating-point pairs are both converted, so only the others must agree
        cast = dtype is not None and src.is_floating_point() and tgt.is_floating_point()
        if not cast and src.dtype != tgt.dtype:
            report.dtype_mismatches.append(
                Mismatch(target, src_name, _dtype_name(tgt.dtype), _dtype_name(src.dtype))
            )
    filled = {id(targets[n]): n for n in plan}
    for name, t in targets.items():
        if name in plan:
            continue
        if id(t) in filled:  # a tied module tensor: filling one name fills the other
            report.tied[name] = filled[id(t)]
        else:
            report.missing.append(name)
    if report.shape_mismatches or report.dtype_mismatches or (strict and not report.ok):
        raise LoadWeightsError(report)
    with torch.no_grad():
        for target, src_name in plan.items():
            _assign(targets[target], sources[src_name], dtype, device)
    report.applied = True
    return report


def _source_tensors(path) -> tuple[dict, str]:
    if isinstance(path, Mapping):
        return {k: _as_tensor(path, k) for k in path}, "<mapping>"
    name = str(getattr(path, "name", path)) if hasattr(path, "read") else str(path)
    if name.endswith(".safetensors"):
        return load_safetensors(name), name
    return extract_weights(path, backend="torch"), name


def _as_tensor(mapping: Mapping, name: str):
    """A mapping's value as a torch tensor; numpy arrays are copied (see :func:`numpy_to_torch`)."""
    value = mapping[name]
    if not isinstance(value, np.ndarray):
        return value
    return numpy_to_torch(value, getattr(mapping, "dtypes", {}).get(name))


def _renamer(rename: Rename | None) -> Callable[[str], str | None]:
    if rename is None:
        return lambda name: None
    if isinstance(rename, Mapping):
        table = dict(rename)

        def by_table(name: str) -> str | None:
            if name in table:
                return table[name]
            prefixes = [k for k in table if name.startswith(k + ".")]
            if not prefixes:
                return None
            k = max(prefixes, key=len)
            return table[k] + name[len(k) :]

        return by_table
    if callable(rename):
        return rename
    try:
        subs = [(re.compile(p), r) for p, r in rename]
    except (TypeError, ValueError):
        raise TypeError(
            "rename must be a dict, a callable, or a list of (pattern, replacement) pairs"
        ) from None

    def by_regex(name: str) -> str | None:
        for pattern, repl in subs:
            name = pattern.sub(repl, name)
        return name

    return by_regex


def _plan(
    sources: dict, targets: dict, renamer: Callable[[str], str | None], report: LoadReport
) -> dict[str, str]:
    """``{module name: source name}``; fills the report's matched/renamed/unexpected."""
    plan: dict[str, str] = {}
    # exact names first, so a rename can never take a place that a same-named source owns
    for src in sources:
        if src in targets:
            plan[src] = src
            report.matched.append(src)
    for src in sources:
        if src in targets:
            continue
        target = renamer(src)
        if target is not None and target in targets and target not in plan:
            plan[target] = src
            report.renamed[src] = target
        else:
            report.unexpected.append(src)
    return plan


def _assign(tgt: torch.Tensor, src: torch.Tensor, dtype, device) -> None:
    import torch

    want_dtype = (
        dtype
        if dtype is not None and src.is_floating_point() and tgt.is_floating_point()
        else tgt.dtype
    )
    want_device = torch.device(device) if device is not None else tgt.device
    if tgt.dtype == want_dtype and tgt.device == want_device:
        tgt.copy_(src)  # in place: the module keeps its storage, memory format and tying
    else:
        tgt.data = src.to(device=want_device, dtype=want_dtype, copy=True)


def _dtype_name(dt) -> str:
    return str(dt).replace("torch.", "")
