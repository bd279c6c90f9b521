"""Find fixture archives and read their inputs and reference outputs.

Every folder under ``fixtures/`` with a ``manifest.json`` holds cases in one format (see
``fixtures/README.md``): ``<name>.pt2`` / ``<name>_core.pt2`` with ``.npz`` inputs ``in_<i>`` and
flattened expected outputs ``out``, ``out.0``, ``out.<key>``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@dataclass(frozen=True)
class Case:
    folder: str  # "zoo", "torch-2.5.1", ...
    name: str  # model name in the manifest
    ir: str  # "training" or "core"
    path: Path
    entry: dict = field(compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"{self.folder}/{self.path.name}"

    @property
    def suffix(self) -> str:
        return "_core" if self.ir == "core" else ""

    @property
    def torch_version(self) -> str:
        """The release that wrote the archive, as its manifest records it (``2.13.0+cpu``)."""
        return self.entry.get("torch_version") or _manifest(self.path.parent).get(
            "torch_version", ""
        )

    @property
    def device(self) -> str:
        """Where the archive was exported and its references computed (``"cpu"``, ``"cuda"``)."""
        return _manifest(self.path.parent).get("device", "cpu")

    @property
    def exported_by_installed_torch(self) -> bool:
        """Written by the release of torch installed here (local tags such as ``+cpu`` aside)."""
        return release(self.torch_version) == release(installed_torch_version())

    @property
    def newer_than_installed_torch(self) -> bool:
        """Written by a later torch than the installed one, which may lack its ops or misread it."""
        return release(self.torch_version) > release(installed_torch_version())

    @property
    def keeps_every_name(self) -> bool:
        """The archive's format records what the exporting module holds in full: every
        state-dict name and ``requires_grad`` (the zoo; older releases drop some of it)."""
        return self.folder == "zoo"

    @property
    def state_dict_path(self) -> Path | None:
        name = self.entry.get("state_dict") or f"{self.name}.state.pt"
        p = self.path.parent / name
        return p if p.exists() else None

    def inputs(self):
        """(args, kwargs) as torch tensors in the recorded dtypes."""
        import torch

        npz = np.load(self.path.with_suffix(".npz"))
        dtypes = self.entry.get("input_dtypes" + self.suffix) or []
        tensors = []
        for i, dt in enumerate(dtypes):
            t = torch.from_numpy(npz[f"in_{i}"].copy())
            tensors.append(t.to(getattr(torch, dt.split(".")[-1])))
        kw = self.entry.get("kwargs") or []
        npos = len(tensors) - len(kw)
        return tuple(tensors[:npos]), dict(zip(kw, tensors[npos:]))

    def expected(self) -> dict:
        """Flattened expected outputs, ``{"out.0": tensor, ...}`` (bfloat16 ones as float32)."""
        import torch

        npz = np.load(self.path.with_suffix(".npz"))
        keys = self.entry.get("outputs" + self.suffix) or [
            k for k in npz.files if k.startswith("out")
        ]
        return {k: torch.from_numpy(npz[k].copy()) for k in keys}

    @property
    def low_precision(self) -> bool:
        dts = self.entry.get("input_dtypes" + self.suffix) or []
        return any("bfloat16" in d or "float16" in d for d in dts)


def release(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)``; ``()`` for an unknown version."""
    parts = []
    for part in version.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def installed_torch_version() -> str:
    import torch

    return torch.__version__


@functools.cache
def _manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


@functools.cache
def torch_program(path: Path):
    """``(torch.export.load(path), None)``, or ``(None, why)`` where the installed torch cannot
    load it (torch refuses another schema major, and older torch cannot read newer archives)."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(path), None
    except Exception as exc:  # noqa: BLE001 (torch raises many kinds; the reason is reported)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return None, f"torch {torch.__version__} cannot load it: {type(exc).__name__}: {first}"


def torch_loads_or_skip(path: Path):
    """``torch.export.load(path)``; skips (saying why) where the installed torch is older than
    the one that wrote the fixture zoo and cannot read the archive. With the zoo's torch or a
    later one, a failure is a failure."""
    import pytest
    import torch

    ep, why = torch_program(path)
    if ep is not None:
        return ep
    if release(installed_torch_version()) >= release(case("zoo", "mlp").torch_version):
        return torch.export.load(path)  # fails again, with torch's own traceback
    pytest.skip(why)


def torch_outputs(c: Case, args=None, kwargs=None) -> tuple[dict | None, str | None]:
    """``(flattened outputs, None)`` of ``ep.module()`` in this process, without gradients as
    pt2interp runs by default, on the fixture's inputs (or those given); ``(None, why)`` where
    the installed torch cannot load or run the archive."""
    import torch

    ep, why = torch_program(c.path)
    if ep is None:
        return None, why
    if args is None:
        args, kwargs = c.inputs()
    try:
        with torch.no_grad():
            return flatten_outputs(ep.module()(*args, **(kwargs or {}))), None
    except Exception as exc:  # noqa: BLE001
        return (
            None,
            f"torch {torch.__version__} cannot run it: {type(exc).__name__}: {str(exc)[:200]}",
        )


def reference_module(c: Case):
    """``(callable, exact)``: torch's own ``ep.module()`` of the archive where the installed
    torch loads it (``exact``: the same kernels in the same order, so equal bit for bit), else
    the eager module that was exported, with the archive's stored weights (``exact`` False:
    eager code may call other kernels than the exported graph). Skips where neither exists."""
    import pytest
    import torch

    ep, why = torch_program(c.path)
    if ep is not None:
        return ep.module(), True
    if c.state_dict_path is None or c.folder != "zoo":
        pytest.skip(f"{c.id}: no eager module to compare with, and {why}")
    eager_runs_or_skip(c)
    sys.path.insert(0, str(FIXTURES.parent))
    from fixtures.zoo import ZOO

    module = ZOO[c.name].module()
    module.load_state_dict(torch.load(c.state_dict_path, weights_only=True))
    return module, False


def eager_runs_or_skip(c: Case) -> None:
    """Skips where the installed torch cannot run the zoo's exporting module of ``c`` eagerly as
    exported (``ZooEntry.eager_torch``)."""
    import pytest
    import torch

    sys.path.insert(0, str(FIXTURES.parent))
    from fixtures.zoo import ZOO

    entry = ZOO[c.name]
    if entry.eager_torch and release(torch.__version__) < release(entry.eager_torch):
        pytest.skip(f"{c.name}'s module runs eagerly as exported from torch {entry.eager_torch} on")


def load_or_skip(c: Case, **kwargs):
    """``pt2interp.load`` of a fixture; skips (saying why) where the archive was written by a
    newer torch that has ops the installed one lacks."""
    import pytest

    import pt2interp

    try:
        return pt2interp.load(c.path, **kwargs)
    except pt2interp.UnsupportedOpError as exc:
        if c.newer_than_installed_torch and "does not exist in torch" in str(exc):
            pytest.skip(f"{c.id} was written by torch {c.torch_version}: {exc}")
        raise


def generated_code_runs_or_skip(c: Case) -> None:
    """Skips where the archive's generated code calls what the installed torch lacks: training
    IR's functorch calls are written as ``torch._functorch.predispatch`` calls (torch 2.11+;
    its jvp calls from torch 2.13)."""
    import re

    import pytest
    import torch

    if not c.newer_than_installed_torch:
        return
    called = set(re.findall(rb"torch\._functorch\.predispatch\.(\w+)", c.path.read_bytes()))
    predispatch = getattr(torch._functorch, "predispatch", None)
    missing = sorted(n.decode() for n in called if not hasattr(predispatch, n.decode()))
    if missing:
        pytest.skip(
            f"{c.id}: its generated code calls torch._functorch.predispatch's "
            f"{', '.join(missing)}, which torch {torch.__version__} lacks"
        )


def device_change_tolerance(dtype) -> float:
    """rtol = atol for outputs computed on another device (its kernels sum in another order;
    float32 with TF32 as the reference had it, :func:`cuda_float32_as_computed_on`): float32
    1e-3, half types 2e-2, float64 1e-6, others exact."""
    import torch

    return {
        torch.float64: 1e-6,
        torch.float32: 1e-3,
        torch.float16: 2e-2,
        torch.bfloat16: 2e-2,
    }.get(dtype, 0)


# torch's own defaults: float32 matmuls in full precision, cuDNN convolutions in TF32
_TF32_AS_COMPUTED_ON = {"cpu": (False, False), "cuda": (False, True)}


@contextlib.contextmanager
def cuda_float32_as_computed_on(device: str):
    """CUDA float32 matmuls and convolutions (TF32 or not) as a reference computed on ``device``
    had them: in full float32 for one computed on a CPU, with torch's defaults (cuDNN
    convolutions in TF32) for the fixtures' CUDA references."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32, cudnn.allow_tf32 = _TF32_AS_COMPUTED_ON[device]
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def manifests() -> list[Path]:
    return sorted(FIXTURES.glob("*/manifest.json"))


def all_cases() -> list[Case]:
    cases = []
    for man_path in manifests():
        man = json.loads(man_path.read_text())
        folder = man_path.parent.name
        for name, entry in sorted(man.get("models", {}).items()):
            if entry.get("large"):
                continue
            for ir, key in (("training", "file"), ("core", "file_core")):
                f = entry.get(key)
                if f and (man_path.parent / f).exists():
                    cases.append(Case(folder, name, ir, man_path.parent / f, entry))
    return cases


def case(folder: str, name: str, ir: str = "training") -> Case:
    for c in all_cases():
        if c.folder == folder and c.name == name and c.ir == ir:
            return c
    raise LookupError(f"no fixture {folder}/{name} ({ir})")


def flatten_outputs(value, prefix: str = "out") -> dict:
    """The same flattening the fixtures' npz files use."""
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten_outputs(v, f"{prefix}.{k}"))
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            out.update(flatten_outputs(v, f"{prefix}.{i}"))
    else:
        out[prefix] = value
    return out
