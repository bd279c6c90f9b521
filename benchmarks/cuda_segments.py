"""CUDA graphs around blockers: when does capturing the runs between them pay?

    python -m benchmarks.cuda_segments                       # on cuda, about two minutes
    python -m benchmarks.cuda_segments --json segments.json
    python -m benchmarks.cuda_segments --device cpu --smoke  # the code paths, on the CPU

A program one graph cannot hold (a random op, a ``.item()``, a ``nonzero``) runs its long runs
of nodes between such blockers as graphs of their own (``verdict == "segments"``); runs shorter
than ``pt2interp.capture_plan.MIN_SEGMENT_NODES`` kernel launches run eagerly, since a
segment's replay adds copies in and out. Two measurements decide that number and whether
segments pay at all (ms per call, medians of interleaved calls, batch 1):

* ``chain-K``: four runs of K elementwise ops on a 1x256 tensor, each run followed by a random
  op (a blocker that hands nothing to the host), for K in 1, 2, 4, 8, 16, 32: eager against
  every run captured (``min_segment_nodes=1``). The smallest K where segments win is where
  ``MIN_SEGMENT_NODES`` belongs.
* ``resnet18-nonzero``: the zoo's ResNet-18 (fp32, 1x3x224x224) whose logits go through
  ``nonzero(softmax > 0.001)`` (a data-dependent size): eager against segments (the backbone one
  graph) with the default threshold.
* ``while-loop``: a ``while_loop`` of 16 rounds whose body is four Linear+GELU layers (width
  256, batch 1): eager against the body replayed as a graph every round (the loop and its
  condition on the host), with the default threshold.

On the CPU the stand-in recorder (``EagerReplay``, which "replays" by running again) takes the
place of CUDA graphs: the figures there only show the code runs, not what segments save.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

import pt2interp
from benchmarks.cuda import Device, Variant, interleave, resnet18
from pt2interp.capture_plan import MIN_SEGMENT_NODES, plan_capture
from pt2interp.cuda_graphs import EagerReplay

CHAIN_LENGTHS = (1, 2, 4, 8, 16, 32)
RUNS = 4  # runs of the chain, each followed by a blocker


class Chain(torch.nn.Module):
    """``RUNS`` runs of ``k`` elementwise ops, a random op after each."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        for _ in range(RUNS):
            for _ in range(self.k):
                x = torch.tanh(x * 1.01 + 0.1)
            x = x + torch.rand_like(x) * 0.0  # a blocker: random numbers, nothing to the host
        return x


class Loop(torch.nn.Module):
    """``ROUNDS`` rounds of a four-layer MLP in a ``while_loop``."""

    ROUNDS = 16

    def __init__(self, width: int = 256):
        super().__init__()
        layers = []
        for _ in range(4):
            layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
        self.body = torch.nn.Sequential(*layers)

    def forward(self, x):
        from torch._higher_order_ops.while_loop import while_loop

        _, y = while_loop(
            lambda i, y: i < self.ROUNDS,
            lambda i, y: (i + 1, self.body(y) * 0.5 + y),
            (torch.zeros((), dtype=torch.int64, device=x.device), x),
        )
        return y


class ResNetNonzero(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.net = resnet18(width)

    def forward(self, x):
        probs = self.net(x).softmax(-1)
        return torch.nonzero(probs > 0.001)


def export(module, args, path: Path) -> Path:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(module.eval(), args)
    torch.export.save(ep, str(path))
    return path


def load_pair(path: Path, device: torch.device, min_segment_nodes: int | None):
    """The program eagerly and in segments (the CPU stand-in recorder off a GPU)."""
    eager = pt2interp.load(path, device=device)
    graphs = pt2interp.load(path, device=device)
    if min_segment_nodes is not None:
        graphs.capture_plan = plan_capture(
            graphs.program.model, min_segment_nodes=min_segment_nodes
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a plan with nothing to capture says so: shown below
        graphs._start_graphs(None if device.type == "cuda" else EagerReplay())
    return eager, graphs


def measure(name, path, args, dev: Device, min_segment_nodes, rounds, iters) -> dict:
    eager, graphs = load_pair(path, dev.device, min_segment_nodes)
    want, got = eager(*args), graphs(*args)  # the capture happens here, not while timed
    same = (
        torch.equal(want, got)
        if want.dtype in (torch.int64, torch.bool)
        else bool(torch.allclose(want, got, rtol=1e-3, atol=1e-3))
    )
    info = graphs.cuda_graphs_info()
    variants = [Variant("eager", eager), Variant("segments", graphs)]
    interleave(variants, args, dev, rounds, iters, deadline=time.monotonic() + 120)
    e, s = (v.median_ms() for v in variants)
    parts = [*info.get("pieces", []), *info.get("subgraphs", [])]
    captured = [p for p in parts if p["runs"] == "graphs"]
    return {
        "case": name,
        "verdict": info["verdict"],
        "parts as graphs": len(captured),
        "eager ms": round(e, 4),
        "segments ms": round(s, 4),
        "speedup": round(e / s, 2),
        "outputs equal": same,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="small ResNet, few calls")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/pt2interp/bench")
    args = ap.parse_args(argv)
    dev = Device(args.device)
    if dev.cuda and not torch.cuda.is_available():
        print(f"device {args.device!r} is not usable: torch sees no CUDA device", file=sys.stderr)
        return 2
    rounds = args.rounds or (2 if args.smoke else 10)
    iters = args.iters or (3 if args.smoke else 50)
    args.cache.mkdir(parents=True, exist_ok=True)
    dev.warm_up()
    tag = f"{dev.device.type}_torch{torch.__version__.split('+')[0]}"
    rows = []
    x = torch.randn(1, 256, device=dev.device)
    for k in CHAIN_LENGTHS[:3] if args.smoke else CHAIN_LENGTHS:
        path = export(Chain(k), (x,), args.cache / f"segbench_chain{k}_{tag}.pt2")
        rows.append(measure(f"chain-{k}", path, (x,), dev, 1, rounds, iters))
        print(json.dumps(rows[-1]), flush=True)
    width, size = (8, 32) if args.smoke else (64, 224)
    image = torch.randn(1, 3, size, size, device=dev.device)
    module = ResNetNonzero(width).to(dev.device)
    path = export(module, (image,), args.cache / f"segbench_resnet_nonzero_{width}_{tag}.pt2")
    rows.append(measure("resnet18-nonzero", path, (image,), dev, None, rounds, iters))
    print(json.dumps(rows[-1]), flush=True)
    try:  # while_loop's export is newer than the rest: a torch that lacks it loses one row
        path = export(Loop().to(dev.device), (x,), args.cache / f"segbench_loop_{tag}.pt2")
        rows.append(measure("while-loop", path, (x,), dev, None, rounds, iters))
        print(json.dumps(rows[-1]), flush=True)
    except Exception as exc:
        print(f"while-loop: not measured ({type(exc).__name__}: {str(exc)[:200]})", flush=True)

    print(f"\ndevice: {dev.device} ({torch.cuda.get_device_name() if dev.cuda else 'cpu'})")
    print("| case | verdict | parts as graphs | eager ms | segments ms | speedup | outputs |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        outputs = "equal" if r["outputs equal"] else "DIFFER"
        print(
            f"| {r['case']} | {r['verdict']} | {r['parts as graphs']} | {r['eager ms']} | "
            f"{r['segments ms']} | {r['speedup']}x | {outputs} |"
        )
    wins = [
        int(r["case"].split("-")[1])
        for r in rows
        if r["case"].startswith("chain-") and r["speedup"] > 1.0
    ]
    shortest = f"{3 * min(wins)} kernel launches" if wins else "none of those tried"
    print(
        f"\nshortest run between blockers where a graph wins: {shortest} (each chain op is "
        f"three: mul, add, tanh); MIN_SEGMENT_NODES is {MIN_SEGMENT_NODES}"
    )
    if args.json:
        args.json.write_text(json.dumps({"device": str(dev.device), "rows": rows}, indent=2))
    return 0 if all(r["outputs equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
