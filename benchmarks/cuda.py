"""pt2interp on a GPU: eager, with CUDA graphs (``cuda_graphs=True``), against torch's own
``ep.module()`` and ``torch.compile(ep.module())``, at batch 1 where launch overhead dominates.

    python -m benchmarks.cuda                               # the four models and serving, on cuda
    python -m benchmarks.cuda --json figures.json           # figures also as JSON (as it goes)
    python -m benchmarks.cuda --cases resnet18-fp32,serve   # some cases only
    python -m benchmarks.cuda --device cpu --smoke --no-compile   # tiny models, a minute on CPU

Models (each exported with ``torch.export.export(model.eval().to(device), args)`` on the device
it runs on and saved with ``torch.export.save`` into ``--cache``, default
``~/.cache/pt2interp/bench/``; later runs reuse the archive):

* ``resnet18-fp32`` / ``resnet18-bf16``: the fixture zoo's ResNet-18 (torchvision's layout and
  names: ``conv1 bn1 relu maxpool layer1..4 avgpool fc``, BasicBlocks, 1000 classes, 11,689,512
  parameters; torchvision is not needed), its BatchNorm statistics taken from one batch of noise
  so that activations keep a sane scale; input 1x3x224x224. bf16: the module converted with
  ``.to(torch.bfloat16)`` before export, the input cast.
* ``gpt-fp32`` / ``gpt-bf16``: ``benchmarks.graph_view_bench.gpt_module`` (GPT-2-small-like,
  12 layers, d_model 768, vocab 30522, context 512, 109M parameters); input ids 1x128 (int64).
* ``serve``: ``pt2interp.serve.Server`` on ResNet-18 fp32 exported with a dynamic batch dim
  (1..64), ``batch_size=1`` against ``batch_size=16`` (``batch_timeout_ms=2``), and on a GPU
  both again with ``cuda_graphs=True`` (a graph per run size, captured at start-up): requests/s from
  ``--serve-threads`` threads each calling ``server.predict(row)`` with a 1-row CPU tensor in a
  loop for ``--serve-seconds``, after a warm-up.

Per model, columns (ms per forward: the median over every timed call, each call between two
``torch.cuda.synchronize()``; the variants take turns, ``--iters`` calls each per round, for
``--rounds`` rounds, after ``--warmup`` calls each):

* ``ep.module()``: ``torch.export.load(path).module()``, called under ``torch.inference_mode()``;
* ``pt2interp``: ``pt2interp.load(path, device=...)`` (runs in inference mode itself);
* ``pt2interp graphs``: ``pt2interp.load(path, device=..., cuda_graphs=True)``: captured on its
  first call, replayed on later ones (n/a on CPU, or where this pt2interp has no such option);
* ``torch.compile(ep.module())``: default mode, under ``torch.no_grad()``; its first call is the
  compile time (cold, unless inductor's on-disk cache already holds the model). Compiles run
  last, after every other case, each only when ``--compile-min-left-s`` of the budget remain,
  and are timed in rounds of their own against ``ep.module()`` and the graphs again (the
  graphs-vs-compile target compares those two);
* load→first output: seconds from calling ``pt2interp.load(..., cuda_graphs=True)`` until the
  first call's output is ready (reading the archive, weights to the GPU, the capture);
* peak GPU MiB: what the variant holds (allocated from before its load until after its warm-up:
  weights, buffers, captured graphs) plus the most its calls allocated on top while timed.

Outputs: pt2interp eager and graphs against ``ep.module()`` on the same inputs (the graphs on an
input other than the one they were captured with, and on that one), ``torch.allclose`` with
rtol = atol = 1e-3 (fp32) or 2e-2 (bf16); the max abs difference is printed. The graphs' outputs
must also be fresh: an output held across a later call must not change.

Targets (PASS/MISS): graphs >= 3x faster than ``ep.module()`` on ResNet-18 fp32 and GPT bf16;
graphs faster than ``torch.compile`` on all four; load→first output < 1 s; outputs within
tolerance. Every case and step runs in its own try/except: an error is printed in its row and
the run carries on. ``--budget-s`` (default 420) bounds the whole run: what is left when it
runs out is skipped (a step already started finishes); at ``--hard-limit-s`` (default: the
budget + 120 s) a watchdog prints every thread's stack to stderr, then the table of what was
measured, and exits with status 3. Output is flushed line by line and ``--json`` rewritten after
every step, so a run cut short still leaves its figures. Figures and how they were taken:
``benchmarks/NOTES.md``.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import importlib.util
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import pt2interp  # noqa: E402

# A checkout where pt2interp is not installed (a bare GPU machine): pyproject maps the
# subpackages pt2interp.ops and pt2interp.codegen to the top-level folders ops/ and codegen/,
# which an install (``pip install --no-deps --no-build-isolation -e .``) arranges; without one,
# the same mapping is made here so that the run does not fail on its first pt2interp.load.
NOT_INSTALLED = (
    importlib.util.find_spec("pt2interp.ops") is None and (REPO / "ops" / "__init__.py").is_file()
)
if NOT_INSTALLED:
    pt2interp.__path__.append(str(REPO))
from benchmarks.graph_view_bench import GPT_FULL, GPT_QUICK, gpt_module  # noqa: E402
from benchmarks.read_schema_bench import cache_dir  # noqa: E402

SPEEDUP_TARGET = 3.0  # graphs against ep.module() on the two launch-bound rows
FIRST_OUTPUT_TARGET_S = 1.0
TOLERANCE = {"fp32": 1e-3, "bf16": 2e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MiB = 1 << 20


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    model: str  # resnet18 | gpt
    dtype: str  # fp32 | bf16
    speedup_target: bool  # graphs >= SPEEDUP_TARGET x ep.module() is a target here


CASES = [
    Case("resnet18-fp32", "ResNet-18 b1 fp32", "resnet18", "fp32", True),
    Case("resnet18-bf16", "ResNet-18 b1 bf16", "resnet18", "bf16", False),
    Case("gpt-fp32", "GPT-110M seq 128 fp32", "gpt", "fp32", False),
    Case("gpt-bf16", "GPT-110M seq 128 bf16", "gpt", "bf16", True),
]
SERVE = "serve"


def label(case: Case, smoke: bool) -> str:
    """The row's name; smoke rows say what they really are."""
    if not smoke:
        return case.label
    if case.model == "resnet18":
        cfg = resnet_config(True)
        return f"ResNet-18 (smoke: width {cfg['width']}, {cfg['size']}px) b1 {case.dtype}"
    cfg = gpt_config(True)
    return (
        f"GPT (smoke: {cfg['layers']} layers, d_model {cfg['d_model']}) seq {gpt_seq(True)} "
        f"{case.dtype}"
    )


ALL_KEYS = [c.key for c in CASES] + [SERVE]


def say(*parts: Any) -> None:
    print(*parts, flush=True)


def short_error(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# the models
# ---------------------------------------------------------------------------------------------


def resnet18(width: int = 64, num_classes: int = 1000):
    """The fixture zoo's ResNet-18 (torchvision's layout, module names and initialisation),
    with ``width`` channels in the stem (64 in the real one)."""
    from fixtures.zoo import ResNet

    torch.manual_seed(0)
    return ResNet(widths=(width, 2 * width, 4 * width, 8 * width), num_classes=num_classes).eval()


def calibrate_batchnorm(model, x) -> None:
    """Running statistics from one batch (``x``), so that eval-mode activations keep unit scale
    rather than growing block after block as they do with the initial mean 0 / variance 1."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = None  # cumulative average: after one batch, that batch's statistics
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
        m.num_batches_tracked.zero_()
    model.eval()


def resnet_config(smoke: bool) -> dict:
    return {"width": 8, "size": 32} if smoke else {"width": 64, "size": 224}


def gpt_config(smoke: bool) -> dict:
    return dict(GPT_QUICK if smoke else GPT_FULL)


def gpt_seq(smoke: bool) -> int:
    return min(128, gpt_config(smoke)["context"] // 2)


def make_module(model: str, smoke: bool, device: torch.device):
    """The model on ``device``, in eval mode, in fp32."""
    if model == "resnet18":
        cfg = resnet_config(smoke)
        module = resnet18(cfg["width"]).to(device)
        gen = torch.Generator().manual_seed(1)
        noise = torch.randn(8, 3, cfg["size"], cfg["size"], generator=gen).to(device)
        calibrate_batchnorm(module, noise)
        return module.eval()
    if model == "gpt":
        return gpt_module(**gpt_config(smoke)).to(device).eval()
    raise ValueError(model)


def make_inputs(model: str, dtype: str, smoke: bool, device, seed: int, batch: int = 1) -> tuple:
    """One call's positional inputs, on ``device``; different ``seed``, different values."""
    gen = torch.Generator().manual_seed(seed)
    if model == "resnet18":
        size = resnet_config(smoke)["size"]
        x = torch.randn(batch, 3, size, size, generator=gen).to(DTYPES[dtype])
        return (x.to(device),)
    cfg = gpt_config(smoke)
    ids = torch.randint(0, cfg["vocab"], (batch, gpt_seq(smoke)), generator=gen)
    return (ids.to(device),)


def archive_name(model: str, dtype: str, smoke: bool, device: torch.device, tag: str = "") -> str:
    size = "smoke" if smoke else "full"
    return (
        f"cudabench_{model}{tag}_{size}_{dtype}_{device.type}"
        f"_torch{torch.__version__.split('+')[0]}.pt2"
    )


def save_export(ep, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".partial-{os.getpid()}-" + path.name)
    torch.export.save(ep, str(tmp))
    os.replace(tmp, path)  # only a complete archive ever has the final name


def case_archive(cache: Path, case: Case, smoke: bool, device: torch.device) -> tuple[Path, float]:
    """The case's archive, exported and saved on first use; and the seconds that took (0 when
    it was there already)."""
    path = cache / archive_name(case.model, case.dtype, smoke, device)
    if path.exists():
        return path, 0.0
    say(f"  exporting {case.label} into {path} ...")
    t = time.perf_counter()
    module = make_module(case.model, smoke, device)
    if case.dtype == "bf16":
        module = module.to(torch.bfloat16)
    args = make_inputs(case.model, case.dtype, smoke, device, seed=0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(module.eval().to(device), args)
    save_export(ep, path)
    return path, time.perf_counter() - t


def serve_archive(cache: Path, smoke: bool, device: torch.device) -> Path:
    """ResNet-18 fp32 with a dynamic batch dimension (1..64), so that a server can stack rows."""
    path = cache / archive_name("resnet18", "fp32", smoke, device, tag="_dynbatch")
    if path.exists():
        return path
    say(f"  exporting ResNet-18 fp32 (dynamic batch) into {path} ...")
    module = make_module("resnet18", smoke, device)
    args = make_inputs("resnet18", "fp32", smoke, device, seed=0, batch=2)
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(module, args, dynamic_shapes=({0: batch},))
    save_export(ep, path)
    return path


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------


class Device:
    """Synchronisation and memory figures for one device (no-ops on CPU)."""

    def __init__(self, name: str):
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def allocated(self) -> int | None:
        if not self.cuda:
            return None
        gc.collect()
        self.sync()
        return torch.cuda.memory_allocated(self.device)

    def reset_peak(self) -> int | None:
        """Resets the peak; returns what is allocated now."""
        if not self.cuda:
            return None
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int | None:
        if not self.cuda:
            return None
        self.sync()
        return torch.cuda.max_memory_allocated(self.device)

    def warm_up(self) -> None:
        """CUDA context, cuBLAS and cuDNN handles: made here, not in the first variant's load."""
        if not self.cuda:
            return
        for dtype in (torch.float32, torch.bfloat16):
            a = torch.randn(64, 64, device=self.device, dtype=dtype)
            (a @ a).sum().item()
            w = torch.randn(4, 3, 3, 3, device=self.device, dtype=dtype)
            torch.nn.functional.conv2d(torch.randn(1, 3, 8, 8, device=self.device, dtype=dtype), w)
        self.sync()


class Variant:
    """One way of running a model, with its timings and memory."""

    def __init__(self, name: str, fn, resident: int | None = None):
        self.name = name
        self.fn = fn
        self.resident = resident  # bytes held by it (weights, graphs), measured at load
        self.samples: list[float] = []  # ms per call
        self.transient = 0  # most bytes its calls allocated on top, while timed

    def median_ms(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def peak_mib(self) -> float | None:
        if self.resident is None:
            return None
        return (self.resident + self.transient) / MiB


def interleave(
    variants: list[Variant], args: tuple, dev: Device, rounds: int, iters: int, deadline: float
) -> int:
    """Times ``iters`` calls of each variant in turn, for ``rounds`` rounds (the first variant
    moving one place each round); stops early, after a whole round, at ``deadline``. Returns
    the rounds run."""
    done = 0
    for r in range(rounds):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            start = dev.reset_peak()
            for _ in range(iters):
                dev.sync()
                t = time.perf_counter()
                out = v.fn(*args)
                dev.sync()
                v.samples.append((time.perf_counter() - t) * 1e3)
                del out
            if start is not None:
                v.transient = max(v.transient, dev.peak() - start)
        done += 1
        if time.monotonic() > deadline:
            break
    return done


def leaves(out) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def compare(got, want, tol: float) -> tuple[float, bool]:
    """Max abs difference over the outputs' leaves, and whether all are allclose."""
    a, b = leaves(got), leaves(want)
    if len(a) != len(b):
        raise AssertionError(f"{len(a)} output tensors where ep.module() gave {len(b)}")
    worst, ok = 0.0, True
    for x, y in zip(a, b):
        if x.shape != y.shape:
            raise AssertionError(f"output shape {tuple(x.shape)} != {tuple(y.shape)}")
        x, y = x.detach().float().cpu(), y.detach().float().cpu()
        worst = max(worst, (x - y).abs().max().item() if x.numel() else 0.0)
        ok = ok and torch.allclose(x, y, rtol=tol, atol=tol)
    return worst, ok


def snapshot(out) -> list[torch.Tensor]:
    return [t.detach().clone() for t in leaves(out)]


def unchanged(out, snap: list[torch.Tensor]) -> bool:
    return all(torch.equal(t, s) for t, s in zip(leaves(out), snap))


def graphs_api_missing() -> str | None:
    """Why this pt2interp cannot be asked for CUDA graphs, or None."""
    try:
        params = inspect.signature(pt2interp.load).parameters
    except (TypeError, ValueError):  # pragma: no cover - a C function or a strange wrapper
        return None
    if "cuda_graphs" not in params and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    ):
        return "pt2interp.load() has no cuda_graphs option"
    return None


def graphs_unavailable(dev: Device) -> str | None:
    """Why the graphs column cannot be measured here, or None."""
    return "needs CUDA" if not dev.cuda else graphs_api_missing()


def plan_of(prog) -> dict | None:
    plan = getattr(prog, "capture_plan", None)
    if plan is None:
        return None
    reasons = getattr(plan, "reasons", None)
    return {
        "verdict": str(getattr(plan, "verdict", "?")),
        "reasons": [str(r) for r in reasons] if reasons is not None else [],
    }


def quiet_torch_load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.load(str(path))


def on_device(module, device: torch.device):
    """``ep.module()`` where its weights are not on ``device`` already (an archive exported
    elsewhere) is moved there; otherwise left as it is."""
    tensors = list(module.parameters()) + list(module.buffers())
    if tensors and any(t.device != device for t in tensors):
        module = module.to(device)
    return module


# ---------------------------------------------------------------------------------------------
# one model: ep.module(), pt2interp, pt2interp graphs (phase 1), torch.compile (phase 2)
# ---------------------------------------------------------------------------------------------


class Run:
    def __init__(self, opts, dev: Device, report: dict):
        self.opts = opts
        self.dev = dev
        self.report = report
        self.t0 = time.monotonic()
        self.deadline = self.t0 + opts.budget_s
        self.finishing = threading.Lock()
        self.finished = False

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        if not self.opts.json:
            return
        path = Path(self.opts.json)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.report, indent=1, default=str))
        os.replace(tmp, path)


def step(row: dict, name: str, fn):
    """Runs ``fn()``; an exception is recorded in ``row["errors"][name]``, printed, and None
    returned."""
    try:
        return fn()
    except Exception as exc:  # a case's failure is a cell in the table, not the end of the run
        row.setdefault("errors", {})[name] = short_error(exc)
        say(f"  {name}: error: {short_error(exc, 2000)}")
        if os.environ.get("PT2INTERP_BENCH_TRACEBACK"):
            traceback.print_exc()
        return None


def phase1(run: Run, case: Case, row: dict, held: dict) -> None:
    """ep.module(), pt2interp eager and graphs for ``case``: outputs, load→first output,
    interleaved timings, peak memory. Keeps what phase 2 needs in ``held``."""
    opts, dev = run.opts, run.dev
    tol = TOLERANCE[case.dtype]
    row["tolerance"] = tol

    got = step(row, "export", lambda: case_archive(opts.cache, case, opts.smoke, dev.device))
    if got is None:
        return
    path, export_s = got
    row["archive"] = str(path)
    row["archive_mb"] = round(path.stat().st_size / 1e6, 2)
    if export_s:
        row["export_s"] = round(export_s, 2)
    x = make_inputs(case.model, case.dtype, opts.smoke, dev.device, seed=1)
    x_check = make_inputs(case.model, case.dtype, opts.smoke, dev.device, seed=2)
    variants: list[Variant] = []

    # ep.module(): the reference
    def load_ep():
        before = dev.allocated()
        t = time.perf_counter()
        module = on_device(quiet_torch_load(path).module(), dev.device)

        def call(*args):
            with torch.inference_mode():
                return module(*args)

        out = call(*x)
        dev.sync()
        row["ep_load_to_first_output_s"] = time.perf_counter() - t
        for _ in range(opts.warmup):
            out = call(*x)
        del out
        after = dev.allocated()
        ref = (call(*x), call(*x_check))
        return Variant("ep", call, None if before is None else after - before), module, ref

    got = step(row, "ep.module()", load_ep)
    if got is None:
        return  # nothing to compare with
    ep_variant, ep_module, (ref_x, ref_check) = got
    variants.append(ep_variant)
    held["ep_module"] = ep_module
    held["ep_variant"] = ep_variant
    held["ref"] = (ref_x, ref_check)

    # pt2interp eager
    def load_eager():
        before = dev.allocated()
        t = time.perf_counter()
        prog = pt2interp.load(path, device=str(dev.device))
        out = prog(*x)
        dev.sync()
        row["eager_load_to_first_output_s"] = time.perf_counter() - t
        for _ in range(opts.warmup):
            out = prog(*x)
        diff_x, ok_x = compare(prog(*x), ref_x, tol)
        diff_c, ok_c = compare(prog(*x_check), ref_check, tol)
        row["eager_max_abs_diff"] = max(diff_x, diff_c)
        row["eager_outputs_ok"] = ok_x and ok_c
        del out
        after = dev.allocated()
        return Variant("eager", prog, None if before is None else after - before)

    eager = step(row, "pt2interp", load_eager)
    if eager is not None:
        variants.append(eager)

    # pt2interp with CUDA graphs
    why_not = graphs_unavailable(dev)
    if why_not:
        row["graphs_na"] = why_not
    else:

        def load_graphs():
            before = dev.allocated()
            dev.sync()
            t = time.perf_counter()
            prog = pt2interp.load(path, device=str(dev.device), cuda_graphs=True)
            loaded = time.perf_counter()
            out = prog(*x)  # captures
            dev.sync()
            done = time.perf_counter()
            row["graphs_load_s"] = loaded - t
            row["graphs_first_call_s"] = done - loaded
            row["graphs_load_to_first_output_s"] = done - t
            row["capture_plan"] = step(row, "capture_plan", lambda: plan_of(prog))
            for _ in range(opts.warmup):
                out = prog(*x)
            # an output held across a later call (on other inputs) must not change
            out_x = prog(*x)
            snap = snapshot(out_x)
            out_check = prog(*x_check)
            dev.sync()
            row["graphs_outputs_fresh"] = unchanged(out_x, snap)
            diff_x, ok_x = compare(out_x, ref_x, tol)
            diff_c, ok_c = compare(out_check, ref_check, tol)
            row["graphs_max_abs_diff"] = max(diff_x, diff_c)
            row["graphs_outputs_ok"] = ok_x and ok_c
            del out, out_x, out_check
            after = dev.allocated()
            return Variant("graphs", prog, None if before is None else after - before)

        graphs = step(row, "pt2interp graphs", load_graphs)
        if graphs is not None:
            variants.append(graphs)
            held["graphs_variant"] = graphs

    if run.left_s() <= 0:
        row["timing_note"] = "budget spent before timing: one round only"
    rounds = step(
        row,
        "timing",
        lambda: interleave(
            variants, x, dev, opts.rounds if run.left_s() > 0 else 1, opts.iters, run.deadline
        ),
    )
    row["rounds"] = rounds
    for v in variants:
        ms = v.median_ms()
        if ms is not None:
            row[f"{v.name}_ms"] = ms
            row[f"{v.name}_calls"] = len(v.samples)
        if v.resident is not None:
            row[f"{v.name}_peak_mib"] = v.peak_mib()
            row[f"{v.name}_resident_mib"] = v.resident / MiB
    held["x"] = x
    held["x_check"] = x_check


def phase2(run: Run, case: Case, row: dict, held: dict) -> None:
    """torch.compile(ep.module()): compile time, then timed in turn with ep.module() and the
    graphs, whose figures from these rounds the graphs-vs-compile target uses."""
    opts, dev = run.opts, run.dev
    module, x = held["ep_module"], held["x"]
    ref_x, ref_check = held["ref"]

    def compile_and_time():
        import torch._dynamo

        torch._dynamo.reset()
        before = dev.allocated()
        compiled = torch.compile(module)

        def call(*args):
            with torch.no_grad():
                return compiled(*args)

        dev.sync()
        t = time.perf_counter()
        out = call(*x)
        dev.sync()
        row["compile_s"] = time.perf_counter() - t
        for _ in range(opts.warmup):
            out = call(*x)
        diff_x, ok_x = compare(call(*x), ref_x, TOLERANCE[case.dtype])
        diff_c, ok_c = compare(call(*held["x_check"]), ref_check, TOLERANCE[case.dtype])
        row["compile_max_abs_diff"] = max(diff_x, diff_c)
        row["compile_outputs_ok"] = ok_x and ok_c
        del out
        after = dev.allocated()
        cv = Variant("compile", call, None if before is None else after - before)
        ep = Variant("ep", held["ep_variant"].fn)
        variants = [ep, cv]
        if "graphs_variant" in held:
            variants.append(Variant("graphs", held["graphs_variant"].fn))
        row["compile_rounds"] = interleave(variants, x, dev, opts.rounds, opts.iters, run.deadline)
        row["compile_ms"] = cv.median_ms()
        row["compile_calls"] = len(cv.samples)
        if cv.resident is not None:
            row["compile_peak_mib"] = cv.peak_mib()
        row["ep_ms_vs_compile"] = ep.median_ms()
        if len(variants) == 3:
            row["graphs_ms_vs_compile"] = variants[2].median_ms()

    step(row, "torch.compile", compile_and_time)


# ---------------------------------------------------------------------------------------------
# serving
# ---------------------------------------------------------------------------------------------


def serve_rate(server, row_input: torch.Tensor, threads: int, seconds: float) -> dict:
    """Requests/s from ``threads`` threads calling ``server.predict`` in a loop for
    ``seconds``; only requests answered within the window count."""
    counts = [0] * threads
    errors: list[str] = []
    start = threading.Barrier(threads + 1)
    window: dict[str, float] = {}
    stop = threading.Event()

    def caller(i: int) -> None:
        start.wait()
        while not stop.is_set():
            try:
                server.predict(row_input)
            except Exception as exc:
                errors.append(short_error(exc))
                return
            if time.perf_counter() <= window["end"]:
                counts[i] += 1

    pool = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    window["end"] = time.perf_counter() + 1e9
    start.wait()
    t0 = time.perf_counter()
    window["end"] = t0 + seconds
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join(timeout=60)
    total = sum(counts)
    return {"requests": total, "seconds": seconds, "rps": total / seconds, "errors": errors[:3]}


def serving(run: Run, report: dict) -> None:
    from pt2interp.serve import Server

    opts, dev = run.opts, run.dev
    row: dict = {"threads": opts.serve_threads, "seconds": opts.serve_seconds}
    report["serve"] = row
    path = step(row, "export", lambda: serve_archive(opts.cache, opts.smoke, dev.device))
    if path is None:
        return
    (x,) = make_inputs("resnet18", "fp32", opts.smoke, "cpu", seed=3)  # a client's CPU row
    # eager at batch_size 1 and 16, and on a GPU the same with CUDA graphs (one per run size,
    # captured at start-up): label → server
    variants = [(1, False), (16, False)] + ([(1, True), (16, True)] if dev.cuda else [])
    servers: dict[str, Any] = {}
    try:
        for bs, graphs in variants:
            label = f"bs{bs}" + ("_graphs" if graphs else "")
            server = step(
                row,
                f"server {label}",
                lambda bs=bs, graphs=graphs: Server(
                    path,
                    name=f"cudabench-bs{bs}-{uuid.uuid4().hex[:8]}",
                    device=str(dev.device),
                    batch_size=bs,
                    batch_timeout_ms=2,
                    **({"cuda_graphs": True} if graphs else {}),
                ),
            )
            if server is not None:
                servers[label] = server
                row[f"{label}_batching"] = server.batching
                if bs > 1 and not server.batching:
                    row[f"{label}_batching_off"] = str(getattr(server.layout, "reason", "?"))
        outs = {}
        for label, server in servers.items():
            outs[label] = step(row, f"predict {label}", lambda s=server: s.predict(x))
            step(
                row,
                f"warm-up {label}",
                lambda s=server: serve_rate(s, x, opts.serve_threads, opts.serve_warmup_s),
            )
        for label in servers:
            if label != "bs1" and outs.get("bs1") is not None and outs.get(label) is not None:
                row[f"max_abs_diff_bs1_{label}"] = step(
                    row, f"compare {label}", lambda lb=label: compare(outs[lb], outs["bs1"], 1.0)[0]
                )
        rates: dict[str, list[float]] = {label: [] for label in servers}
        for r in range(opts.serve_rounds):
            for label in sorted(servers, reverse=bool(r % 2)):  # take turns, both directions
                got = step(
                    row,
                    f"round {label}",
                    lambda s=servers[label]: serve_rate(
                        s, x, opts.serve_threads, opts.serve_seconds
                    ),
                )
                if got is not None:
                    rates[label].append(got["rps"])
                    if got["errors"]:
                        row.setdefault("errors", {})[f"requests {label}"] = got["errors"][0]
            if run.left_s() <= 0:
                break
        for label, values in rates.items():
            if values:
                row[f"{label}_rps"] = statistics.median(values)
                row[f"{label}_rps_rounds"] = values
        if row.get("bs1_rps") and row.get("bs16_rps"):
            row["ratio"] = row["bs16_rps"] / row["bs1_rps"]
        if row.get("bs1_graphs_rps") and row.get("bs16_graphs_rps"):
            row["ratio_graphs"] = row["bs16_graphs_rps"] / row["bs1_graphs_rps"]
        for label, server in servers.items():
            info = server.info()
            if info.get("cuda_graphs"):
                row[f"{label}_cuda_graphs"] = {
                    k: info["cuda_graphs"].get(k) for k in ("verdict", "graphs", "captures")
                }
    finally:
        for server in servers.values():
            try:
                server.shutdown(drain=False, timeout=5.0)
            except Exception as exc:
                row.setdefault("errors", {})["shutdown"] = short_error(exc)


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------


def environment(dev: Device) -> dict:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(dev.device),
        "cpus": os.cpu_count(),
        "pt2interp": getattr(pt2interp, "__version__", "?"),
        "pt2interp_commit": git_commit(),
        "pt2interp_path": str(Path(pt2interp.__file__).parent)
        + (" (not installed: ops/ and codegen/ mapped from the checkout)" if NOT_INSTALLED else ""),
        "graphs_api": graphs_api_missing() or "present",
    }
    if dev.cuda:
        env["gpu"] = torch.cuda.get_device_name(dev.device)
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return env


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short=12", "HEAD") + (" (with local changes)" if dirty else "")
    except Exception:
        return "unknown (no git checkout)"


def ms_cell(row: dict, key: str, na_key: str | None = None) -> str:
    if row.get(key) is not None:
        return f"{row[key]:.3f}"
    if na_key and row.get(na_key):
        return f"n/a: {row[na_key]}"
    for name in _ERROR_STEPS.get(key, ()):
        if name in row.get("errors", {}):
            return f"error: {row['errors'][name][:80]}"
    return row.get("skipped", "-")


# the steps whose failure leaves a figure empty, in the order they run
_BEFORE = ("case", "export", "ep.module()")
_ERROR_STEPS = {
    "ep_ms": (*_BEFORE, "timing"),
    "eager_ms": (*_BEFORE, "pt2interp", "timing"),
    "graphs_ms": (*_BEFORE, "pt2interp graphs", "timing"),
    "compile_ms": (*_BEFORE, "torch.compile"),
    "compile_s": (*_BEFORE, "torch.compile"),
    "graphs_load_to_first_output_s": (*_BEFORE, "pt2interp graphs"),
}


def with_unit(cell: str, unit: str = "ms") -> str:
    return f"{cell} {unit}" if cell[:1].isdigit() else cell


def mib(value) -> str:
    return f"{value:,.0f}" if value is not None else "n/a"


def table(report: dict) -> str:
    head = (
        "| model | `ep.module()` | pt2interp | pt2interp graphs | `torch.compile(ep.module())` "
        "| its compile time s | load→first output s (pt2interp graphs) "
        "| peak GPU MiB ep.module / graphs |"
    )
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["cases"]:
        compile_cell = ms_cell(row, "compile_ms", "compile_na")
        compile_s = ms_cell(row, "compile_s", "compile_na")
        if row.get("compile_s") is not None:
            compile_s = f"{row['compile_s']:.1f}"
        first = ms_cell(row, "graphs_load_to_first_output_s", "graphs_na")
        if row.get("graphs_load_to_first_output_s") is not None:
            first = f"{row['graphs_load_to_first_output_s']:.2f}"
        if report["env"]["device"].startswith("cuda"):
            peak = f"{mib(row.get('ep_peak_mib'))} / {mib(row.get('graphs_peak_mib'))}"
        else:
            peak = "n/a (no GPU)"
        cells = [
            row["label"],
            ms_cell(row, "ep_ms"),
            ms_cell(row, "eager_ms"),
            ms_cell(row, "graphs_ms", "graphs_na"),
            compile_cell,
            compile_s,
            first,
            peak,
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def details(row: dict) -> str:
    if "skipped" in row:
        return row["skipped"]
    diffs = []
    for name in ("eager", "graphs", "compile"):
        if row.get(f"{name}_max_abs_diff") is not None:
            ok = "ok" if row.get(f"{name}_outputs_ok") else "OUT OF TOLERANCE"
            if name == "compile" and not row.get(f"{name}_outputs_ok"):
                ok = "beyond the tolerance; not a target"
            diffs.append(f"{name} {row[f'{name}_max_abs_diff']:.3g} ({ok})")
    parts = [f"max |diff| vs ep.module() (tol {row.get('tolerance')}): {', '.join(diffs) or '-'}"]
    plan = row.get("capture_plan")
    if plan:
        parts.append(f"capture plan: {plan['verdict']}")
    elif row.get("graphs_na"):
        parts.append(f"graphs n/a: {row['graphs_na']}")
    if "graphs_outputs_fresh" in row:
        parts.append(f"graphs outputs fresh: {'yes' if row['graphs_outputs_fresh'] else 'NO'}")
    if row.get("graphs_load_s") is not None:
        parts.append(
            f"graphs load {row['graphs_load_s']:.2f} s + first call (capture) "
            f"{row['graphs_first_call_s']:.2f} s"
        )
    return "; ".join(parts)


def why_missing(row: dict, key: str, na_key: str | None = None) -> str:
    """Why ``row[key]`` has no figure: its n/a reason, the error of the step behind it, or the
    budget."""
    cell = ms_cell(row, key, na_key)
    return cell.removeprefix("n/a: ") if cell != "-" else "not measured"


def targets(report: dict) -> list[dict]:
    """PASS / MISS (or n/a, with why) for each target of each row present."""
    out: list[dict] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        status = {True: "PASS", False: "MISS"}.get(ok, "n/a")
        out.append({"target": name, "status": status, "detail": detail})

    rows = {r["key"]: r for r in report["cases"]}
    present = [(case, rows[case.key]) for case in CASES if case.key in rows]
    for case, row in present:
        if not case.speedup_target:
            continue
        name = f"{row['label']}: graphs >= {SPEEDUP_TARGET:g}x ep.module()"
        ep, gr = row.get("ep_ms"), row.get("graphs_ms")
        if ep and gr:
            add(name, ep / gr >= SPEEDUP_TARGET, f"{ep / gr:.2f}x ({ep:.3f} / {gr:.3f} ms)")
        else:
            add(name, None, why_missing(row, "graphs_ms", "graphs_na"))
    for _case, row in present:
        name = f"{row['label']}: graphs faster than torch.compile"
        gr, co = row.get("graphs_ms_vs_compile"), row.get("compile_ms")
        if gr and co:
            add(name, gr < co, f"{gr:.3f} vs {co:.3f} ms (compiled / graphs {co / gr:.2f}x)")
        elif row.get("graphs_ms") is None:
            add(name, None, why_missing(row, "graphs_ms", "graphs_na"))
        else:
            add(name, None, why_missing(row, "compile_ms", "compile_na"))
    for _case, row in present:
        name = f"{row['label']}: load→first output < {FIRST_OUTPUT_TARGET_S:g} s (graphs)"
        s = row.get("graphs_load_to_first_output_s")
        if s is not None:
            add(name, s < FIRST_OUTPUT_TARGET_S, f"{s:.2f} s")
        else:
            add(name, None, why_missing(row, "graphs_load_to_first_output_s", "graphs_na"))
    for _case, row in present:
        name = f"{row['label']}: outputs within tolerance"
        checks = {n: row.get(f"{n}_outputs_ok") for n in ("eager", "graphs")}
        if "graphs_outputs_fresh" in row:
            checks["graphs fresh"] = row["graphs_outputs_fresh"]
        measured = {k: v for k, v in checks.items() if v is not None}
        detail = ", ".join(f"{k} {'ok' if v else 'BAD'}" for k, v in measured.items())
        if checks["graphs"] is None and not row.get("graphs_na") and "errors" in row:
            # graphs were possible here and failed: that is a miss, not an absence
            err = why_missing(row, "graphs_ms", "graphs_na")
            add(name, False, f"{detail}; graphs {err}" if detail else f"graphs {err}")
        elif measured:
            add(name, all(measured.values()), detail)
        else:
            add(name, None, "not measured")
    return out


def serve_line(row: dict) -> str:
    if "threads" not in row:
        return f"serving: {row.get('skipped') or row.get('errors') or 'not measured'}"
    head = f"serving ResNet-18 fp32, {row['threads']} threads x {row['seconds']:g} s:"
    parts = []
    for label in ("bs1", "bs16", "bs1_graphs", "bs16_graphs"):
        name = label.replace("bs", "batch_size=").replace("_graphs", " with CUDA graphs")
        if row.get(f"{label}_rps") is not None:
            parts.append(f"{name} {row[f'{label}_rps']:,.0f} req/s")
        elif not label.endswith("_graphs"):
            parts.append(f"{name} -")
    if row.get("ratio"):
        parts.append(f"ratio {row['ratio']:.2f}x")
    if row.get("ratio_graphs"):
        parts.append(f"ratio with graphs {row['ratio_graphs']:.2f}x")
    diffs = [v for k, v in row.items() if k.startswith("max_abs_diff_bs1_") and v is not None]
    if diffs:
        parts.append(f"max |diff| of one row's answers {max(diffs):.3g}")
    if row.get("bs16_batching_off"):
        parts.append(f"(batching off: {row['bs16_batching_off']})")
    if row.get("errors"):
        parts.append("errors: " + "; ".join(f"{k}: {v}" for k, v in row["errors"].items()))
    return head + " " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.cuda",
        description="pt2interp eager and with CUDA graphs against ep.module() and torch.compile",
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny models, few iterations")
    ap.add_argument(
        "--cases",
        default=",".join(ALL_KEYS),
        help=f"comma-separated, of: {', '.join(ALL_KEYS)} (default: all)",
    )
    ap.add_argument("--iters", type=int, help="timed calls per variant per round (default 20)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 10)")
    ap.add_argument("--warmup", type=int, help="untimed calls per variant first (default 5)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="overall time budget; what is left when it runs out is skipped",
    )
    ap.add_argument(
        "--compile-min-left-s",
        type=float,
        help="start a torch.compile only with this much budget left (default 60)",
    )
    ap.add_argument(
        "--hard-limit-s",
        type=float,
        help="print what there is and exit after this long, whatever runs (default: budget + 120)",
    )
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--serve-threads", type=int, help="concurrent callers (default 32)")
    ap.add_argument("--serve-seconds", type=float, help="seconds per serving round (default 5)")
    ap.add_argument("--serve-rounds", type=int, help="serving rounds per server (default 2)")
    ap.add_argument("--cache", type=Path, help="where archives are kept (default: see the doc)")
    ap.add_argument("--json", help="write the figures here (rewritten after every step)")
    opts = ap.parse_args(argv)
    small = opts.smoke
    defaults = {
        "iters": 3 if small else 20,
        "rounds": 2 if small else 10,
        "warmup": 1 if small else 5,
        "compile_min_left_s": 10.0 if small else 60.0,
        "serve_threads": 8 if small else 32,
        "serve_seconds": 0.5 if small else 5.0,
        "serve_rounds": 1 if small else 2,
    }
    for k, v in defaults.items():
        if getattr(opts, k) is None:
            setattr(opts, k, v)
    opts.serve_warmup_s = 0.2 if small else 1.0
    if opts.hard_limit_s is None:
        opts.hard_limit_s = opts.budget_s + 120.0
    opts.cache = opts.cache or cache_dir()
    keys = [k.strip() for k in opts.cases.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ALL_KEYS]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(ALL_KEYS)}")
    opts.keys = keys
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        dev = Device(opts.device)
        torch.empty(0, device=dev.device)
    except Exception as exc:
        say(f"device {opts.device!r} is not usable: {short_error(exc)}")
        return 2
    report: dict = {
        "env": environment(dev),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "cases": [],
    }
    run = Run(opts, dev, report)
    start_watchdog(run, opts.hard_limit_s)
    env = report["env"]
    say("# pt2interp on " + (env.get("gpu") or str(dev.device)))
    say(
        f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
        f"Python {env['python']}, pt2interp {env['pt2interp']} "
        f"(commit {env['pt2interp_commit']}), {env['cpus']} CPUs"
    )
    say(f"pt2interp from {env['pt2interp_path']}")
    if dev.cuda:
        say(f"GPU: {env['gpu']}; TF32 matmul {env['tf32_matmul']}, cuDNN {env['tf32_cudnn']}")
    say(
        f"cuda_graphs API: {env['graphs_api']}; budget {opts.budget_s:g} s; "
        f"{opts.rounds} rounds x {opts.iters} calls after {opts.warmup} warm-up calls"
        + ("; smoke sizes" if opts.smoke else "")
    )
    run.save()
    step(env, "warm-up", dev.warm_up)
    try:
        measure(run)
    except Exception as exc:  # a bug here, not in a case: still print what there is
        report["fatal"] = short_error(exc, 2000)
        say(f"error: {report['fatal']}")
        traceback.print_exc()
    finish(run)
    return 1 if "fatal" in report else 0


def measure(run: Run) -> None:
    """Phase 1 for each model, then serving, then phase 2 (torch.compile) for each model."""
    opts, report = run.opts, run.report
    held: dict[str, dict] = {}
    todo = [c for c in CASES if c.key in opts.keys]
    # phase 1: ep.module(), pt2interp, pt2interp graphs
    for case in todo:
        row: dict = {"key": case.key, "label": label(case, opts.smoke), "dtype": case.dtype}
        report["cases"].append(row)
        if run.left_s() <= 0:
            row["skipped"] = "skipped: budget spent"
            say(f"{row['label']}: skipped, budget spent")
            continue
        say(f"{row['label']}:")
        held[case.key] = {}
        try:
            phase1(run, case, row, held[case.key])
        except Exception as exc:  # belt and braces: step() catches the known steps
            row.setdefault("errors", {})["case"] = short_error(exc)
            say(f"  error: {short_error(exc, 2000)}")
        say(
            "  "
            + ", ".join(
                f"{name} {with_unit(ms_cell(row, key, na))}"
                for name, key, na in (
                    ("ep.module()", "ep_ms", None),
                    ("pt2interp", "eager_ms", None),
                    ("graphs", "graphs_ms", "graphs_na"),
                )
            )
        )
        say("  " + details(row))
        run.save()
        gc.collect()

    # serving
    if SERVE in opts.keys:
        if run.left_s() <= 0:
            report["serve"] = {"skipped": "skipped: budget spent"}
            say("serving: skipped, budget spent")
        else:
            say("serving:")
            try:
                serving(run, report)
            except Exception as exc:
                report.setdefault("serve", {}).setdefault("errors", {})["serve"] = short_error(exc)
                say(f"  error: {short_error(exc, 2000)}")
            say("  " + serve_line(report["serve"]))
        run.save()

    # phase 2: torch.compile, last (the slowest by far)
    for case in todo:
        row = next(r for r in report["cases"] if r["key"] == case.key)
        h = held.get(case.key, {})
        if "skipped" in row:
            continue
        if opts.no_compile:
            row["compile_na"] = "--no-compile"
            continue
        if "ep_module" not in h:
            row["compile_na"] = "no ep.module()"
            continue
        if run.left_s() < opts.compile_min_left_s:
            row["compile_na"] = f"skipped: {max(run.left_s(), 0):.0f} s of budget left"
            say(f"{row['label']}: torch.compile skipped, {max(run.left_s(), 0):.0f} s left")
            continue
        say(f"{row['label']}: torch.compile ...")
        try:
            phase2(run, case, row, h)
        except Exception as exc:
            row.setdefault("errors", {})["torch.compile"] = short_error(exc)
            say(f"  error: {short_error(exc, 2000)}")
        if row.get("compile_ms") is not None:
            say(
                f"  compiled in {row['compile_s']:.1f} s; {row['compile_ms']:.3f} ms "
                f"(same rounds: ep.module() {with_unit(ms_cell(row, 'ep_ms_vs_compile'))}, "
                f"graphs {with_unit(ms_cell(row, 'graphs_ms_vs_compile', 'graphs_na'))}); "
                "max |diff| "
                f"{row['compile_max_abs_diff']:.3g}"
            )
        run.save()
        held.pop(case.key, None)
        gc.collect()


def finish(run: Run) -> None:
    """Targets into the report, the report saved, and the table and summary printed (once: by
    the main thread or by the watchdog, whichever comes first)."""
    with run.finishing:
        if run.finished:
            return
        run.finished = True
        report = run.report
        report["elapsed_s"] = time.monotonic() - run.t0
        for name, part in (("targets", targets), ("summary", summary)):
            try:
                out = part(report)
                if name == "targets":
                    report["targets"] = out
            except Exception as exc:  # a bug in the report must not cost the figures
                say(f"(the {name} failed: {short_error(exc, 2000)})")
        run.save()


def summary(report: dict) -> None:
    say("")
    if report["cases"]:
        say(table(report))
        say("")
        say("ms per forward, medians; details per model:")
    for row in report["cases"]:
        say(f"- {row['label']}: " + details(row))
        plan = row.get("capture_plan")
        for reason in (plan or {}).get("reasons", [])[:5]:
            say(f"    - {reason}")
        for name, err in row.get("errors", {}).items():
            say(f"    error in {name}: {err}")
    if "serve" in report:
        say("- " + serve_line(report["serve"]))
    say("")
    say("targets:")
    for t in report.get("targets", []):
        say(f"- {t['status']}: {t['target']}: {t['detail']}")
    say(f"\n{report['elapsed_s']:.0f} s in all")


def start_watchdog(run: Run, limit_s: float) -> None:
    """After ``limit_s`` (a step stuck past the budget: a hung capture, a compile that does not
    end), print where every thread is, then the table of what was measured, and exit (3)."""

    def bite() -> None:
        time.sleep(limit_s)
        say(f"\nhard time limit of {limit_s:g} s reached, a step is stuck; stacks on stderr")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        run.report["hard_limit_reached"] = True
        try:
            if run.finishing.acquire(timeout=30):  # the main thread may be finishing itself
                run.finishing.release()
                finish(run)
        finally:
            sys.stdout.flush()
            os._exit(3)

    threading.Thread(target=bite, name="cudabench-watchdog", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
