"""Find fixture archives and read their inputs and reference outputs.

Every folder under ``fixtures/`` with a ``manifest.json`` holds cases in one format (see
``fixtures/README.md``): ``<name>.pt2`` / ``<name>_core.pt2`` with ``.npz`` inputs ``in_<i>`` and
flattened expected outputs ``out``, ``out.0``, ``out.<key>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@dataclass(frozen=True)
class Case:
    folder: str          # "zoo", "torch-2.5.1", ...
    name: str            # model name in the manifest
    ir: str              # "training" or "core"
    path: Path
    entry: dict = field(compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"{self.folder}/{self.path.name}"

    @property
    def suffix(self) -> str:
        return "_core" if self.ir == "core" else ""

    @property
    def made_here(self) -> bool:
        """Exported by the installed torch (so kernels match bit for bit)."""
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
        keys = self.entry.get("outputs" + self.suffix) or [k for k in npz.files if k.startswith("out")]
        return {k: torch.from_numpy(npz[k].copy()) for k in keys}

    @property
    def low_precision(self) -> bool:
        dts = self.entry.get("input_dtypes" + self.suffix) or []
        return any("bfloat16" in d or "float16" in d for d in dts)


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
