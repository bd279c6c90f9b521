"""Speed and memory of pt2interp against torch, as ratios, in one run.

    python -m benchmarks.run                 # everything (builds the big models once, cached)
    python -m benchmarks.run --only tiny     # one section: resnet18, gpt, tiny, memory, schema
    python -m benchmarks.run --repeats 9     # more interleaved runs per figure

Every figure is a median over interleaved runs (torch, pt2interp, torch, ...) in one process
with ``torch.set_num_threads`` fixed, after warm-ups, and both sides run under the same grad
mode (``torch.inference_mode()``). Ratios are medians of the per-round ratios of calls timed
side by side, so the machine's drift from one round to the next cancels out. Peak memory is
measured in fresh processes. These machines are shared and noisy: read the ratios, not the
absolute times.

Models (exported by the installed torch, cached outside the repository):
- ``resnet18``: the full-size ResNet-18 of the fixture zoo (11.7M parameters).
- ``gpt``: a GPT-style decoder, 12 layers, d_model 768, vocab 32000, tied embeddings (~110M).
- ``tiny``: 2,000 elementwise ops on 8-element tensors, where dispatch is everything.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CACHE = (
    Path(os.environ.get("PT2INTERP_CACHE", Path.home() / ".cache" / "pt2interp"))
    / "bench"
    / f"torch-{torch.__version__}"
)


# -- models ------------------------------------------------------------------------------------


class GPTBlock(torch.nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(d)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)
        self.ln2 = torch.nn.LayerNorm(d)
        self.fc = torch.nn.Linear(d, 4 * d)
        self.out = torch.nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(torch.nn.functional.gelu(self.fc(self.ln2(x))))


class GPT(torch.nn.Module):
    def __init__(self, vocab=32000, d=768, layers=12, heads=12, ctx=512):
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Embedding(ctx, d)
        self.blocks = torch.nn.ModuleList(GPTBlock(d, heads) for _ in range(layers))
        self.ln = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


class TinyOps(torch.nn.Module):
    """2,000 elementwise ops on 8-element tensors."""

    def forward(self, x, y):
        for _ in range(1000):
            x = torch.add(x, y)
            x = torch.mul(x, y)
        return x


def _export_cached(name: str, make, args) -> Path:
    path = CACHE / f"{name}.pt2"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"exporting {name} into {CACHE} (once) ...", flush=True)
    torch.manual_seed(0)
    module = make().eval()
    with torch.no_grad():
        ep = torch.export.export(module, args)
    tmp = CACHE / f".{name}.{os.getpid()}.pt2"
    torch.export.save(ep, tmp)
    tmp.replace(path)
    return path


def resnet18_path(batch: int = 1) -> Path:
    """The zoo's full-size ResNet-18 exported at ``batch`` (exports guard the batch size)."""
    from fixtures.zoo import ZOO

    return _export_cached(
        f"resnet18_b{batch}", ZOO["resnet18"].module, (torch.randn(batch, 3, 224, 224),)
    )


def gpt_path() -> Path:
    return _export_cached("gpt", GPT, (torch.randint(0, 32000, (1, 128)),))


def tiny_path() -> Path:
    return _export_cached("tiny_ops", TinyOps, (torch.randn(8), torch.randn(8)))


# -- measuring -----------------------------------------------------------------------------------


def interleaved(
    fns: dict, repeats: int, warmup: int = 1, samples: dict | None = None
) -> dict[str, float]:
    """Median seconds per call of each function, runs interleaved so drift hits all alike.
    ``samples``, if given, receives every timing by name (for :func:`paired_ratio`)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            # collect the previous run's garbage first, so no call pays for another's objects
            gc.collect()
            t = time.perf_counter()
            result = fn()
            times[k].append(time.perf_counter() - t)
            del result
    if samples is not None:
        samples.update(times)
    return {k: statistics.median(v) for k, v in times.items()}


def paired_ratio(samples: dict, num: str, den: str) -> float:
    """Median over rounds of num/den timed side by side in the same round: the machine's
    drift between rounds (large on shared VMs) cancels, where a ratio of medians keeps it."""
    return statistics.median(a / b for a, b in zip(samples[num], samples[den]))


def bench_load(path: Path, repeats: int) -> dict:
    import pt2interp

    samples: dict = {}
    t = interleaved(
        {
            "torch": lambda: torch.export.load(path).module(),
            "pt2interp": lambda: pt2interp.load(path),
        },
        repeats,
        samples=samples,
    )
    return {
        "torch_load_s": t["torch"],
        "pt2interp_load_s": t["pt2interp"],
        "load_ratio": paired_ratio(samples, "torch", "pt2interp"),
    }


def bench_forward(path: Path, args: tuple, repeats: int) -> dict:
    import pt2interp

    gm = torch.export.load(path).module()
    prog = pt2interp.load(path)

    def run_torch():
        with torch.inference_mode():
            gm(*args)

    samples: dict = {}
    t = interleaved(
        {"torch": run_torch, "pt2interp": lambda: prog(*args)}, repeats, warmup=2, samples=samples
    )
    with torch.inference_mode():
        same = torch.equal(gm(*args), prog(*args))
    return {
        "torch_fwd_ms": t["torch"] * 1e3,
        "pt2interp_fwd_ms": t["pt2interp"] * 1e3,
        "fwd_ratio": paired_ratio(samples, "pt2interp", "torch"),
        "outputs_equal": same,
    }


def bench_tiny(repeats: int) -> dict:
    import pt2interp

    path = tiny_path()
    x, y = torch.randn(8), torch.randn(8)
    gm = torch.export.load(path).module()
    prog = pt2interp.load(path)
    nodes = len(prog.program.graph.nodes)

    def direct():
        a = x
        for _ in range(1000):
            a = torch.add(a, y)
            a = torch.mul(a, y)
        return a

    def graph_module():
        with torch.inference_mode():
            return gm(x, y)

    def direct_im():
        with torch.inference_mode():
            return direct()

    samples: dict = {}
    t = interleaved(
        {"direct": direct_im, "graph_module": graph_module, "pt2interp": lambda: prog(x, y)},
        repeats,
        warmup=3,
        samples=samples,
    )
    us = {k: v / nodes * 1e6 for k, v in t.items()}
    return {
        "nodes": nodes,
        "direct_us_per_node": us["direct"],
        "graph_module_us_per_node": us["graph_module"],
        "pt2interp_us_per_node": us["pt2interp"],
        "ratio_vs_graph_module": paired_ratio(samples, "pt2interp", "graph_module"),
    }


# Peak RSS from /proc/self/status VmHWM, which starts afresh at exec: ru_maxrss would carry over
# the (large) benchmark parent's peak into the child.
_MEMORY_CHILD = r"""
import json, sys, torch
def status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))
torch.set_num_threads(int(sys.argv[3]))
which, path = sys.argv[1], sys.argv[2]
base = {k: status_kb(k) for k in ("VmHWM:", "RssAnon:", "RssFile:")}
idx = torch.randint(0, 32000, (1, 128))
if which == "torch":
    m = torch.export.load(path).module()
    with torch.inference_mode():
        out = m(idx)
else:
    import pt2interp
    m = pt2interp.load(path)
    out = m(idx)
# with the program and the output still held: what the peak was made of, file-backed (mapped
# weights, library code) and anonymous (copies, activations, the output, the parsed program)
print(json.dumps({"base_kb": base["VmHWM:"], "peak_kb": status_kb("VmHWM:"),
                  "anon_kb": status_kb("RssAnon:") - base["RssAnon:"],
                  "file_kb": status_kb("RssFile:") - base["RssFile:"], "output_bytes": out.nbytes}))
"""


def bench_memory(path: Path, threads: int) -> dict:
    import pt2interp

    weight_bytes = sum(
        t.untyped_storage().nbytes()
        for t in {
            id(t.untyped_storage()): t for t in pt2interp.read_program(path).state_dict().values()
        }.values()
    )
    out = {"weights_mb": weight_bytes / 2**20}
    env = _python_env()
    for which in ("torch", "pt2interp"):
        r = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, which, str(path), str(threads)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        fig = json.loads(r.stdout.strip().splitlines()[-1])
        extra = (fig["peak_kb"] - fig["base_kb"]) * 1024
        out[f"{which}_peak_over_base_mb"] = extra / 2**20
        out[f"{which}_x_weights"] = extra / weight_bytes
        out[f"{which}_anon_mb"] = fig["anon_kb"] / 1024
        out[f"{which}_file_mb"] = fig["file_kb"] / 1024
        out["output_mb"] = fig["output_bytes"] / 2**20
    return out


@functools.cache
def _python_env() -> dict:
    """The environment of a user's process: bytecode is cached (installed packages ship it), in a
    folder of the benchmark cache rather than the repository. Compiled here once, so no measured
    process pays for (or counts the memory of) compiling pt2interp."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(CACHE / "pycache")
    subprocess.run(
        [sys.executable, "-c", "import pt2interp.api, pt2interp.cli, pt2interp.introspect"],
        env=env,
        check=False,
    )
    return env


_SCHEMA_CHILD = r"""
import json, statistics, sys, time
t = time.perf_counter()
import pt2interp
pt2interp.read_schema(sys.argv[1])
first = time.perf_counter() - t
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    pt2interp.read_schema(sys.argv[1])
    times.append(time.perf_counter() - t)
print(json.dumps({"first_s": first, "median_s": statistics.median(times),
                  "torch_imported": "torch" in sys.modules}))
"""


def bench_schema(path: Path, repeats: int) -> dict:
    """``read_schema`` in a process that never imports torch: the first call (with the import of
    pt2interp) and the median of the calls after it; then whole ``pt2interp info`` processes."""
    env = _python_env()
    out = {}
    try:
        r = subprocess.run(
            [sys.executable, "-c", _SCHEMA_CHILD, str(path), str(max(repeats, 9))],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        fig = json.loads(r.stdout.strip().splitlines()[-1])
        out["read_schema_ms"] = fig["median_s"] * 1e3
        out["read_schema_first_call_ms"] = fig["first_s"] * 1e3
        out["torch_imported"] = fig["torch_imported"]
    except (subprocess.CalledProcessError, ValueError, KeyError) as exc:
        out["read_schema_ms"] = (
            f"unavailable ({str(getattr(exc, 'stderr', exc)).strip().splitlines()[-1][:80]})"
        )
    times, ok = [], True
    for _ in range(5):
        t = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "pt2interp.cli", "info", str(path)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        times.append(time.perf_counter() - t)
        ok = ok and r.returncode == 0
    out["info_process_s"] = statistics.median(times)
    out["info_ok"] = ok
    return out


# -- report --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", nargs="*", default=None, help="resnet18 gpt tiny memory schema")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    want = set(a.only or ["resnet18", "gpt", "tiny", "memory", "schema"])
    results: dict = {
        "torch": torch.__version__,
        "threads": a.threads,
        "machine": os.uname().machine,
        "cpus": os.cpu_count(),
    }

    rows = []
    if "resnet18" in want:
        for batch in (1, 8):
            p = resnet18_path(batch)
            load = bench_load(p, a.repeats)
            # short calls, so more of them: 40 ms calls here vary by a third from one to the next
            fwd = bench_forward(
                p, (torch.randn(batch, 3, 224, 224),), 6 * a.repeats if batch == 1 else a.repeats
            )
            rows.append({"model": f"resnet18 b{batch}", "params": "11.7M", **load, **fwd})
    if "gpt" in want:
        p = gpt_path()
        load = bench_load(p, max(3, a.repeats // 2))
        fwd = bench_forward(p, (torch.randint(0, 32000, (1, 128)),), max(3, a.repeats // 2))
        rows.append({"model": "gpt s128", "params": "110M", **load, **fwd})
    results["models"] = rows
    if rows:
        print(
            f"\n{'model':<12} {'params':>6} {'torch load s':>12} {'ours load s':>11} {'ratio':>6} "
            f"{'torch fwd ms':>12} {'ours fwd ms':>11} {'ratio':>6} {'equal':>5}"
        )
        for r in rows:
            print(
                f"{r['model']:<12} {r['params']:>6} {r['torch_load_s']:>12.3f} "
                f"{r['pt2interp_load_s']:>11.4f} {r['load_ratio']:>5.1f}x "
                f"{r['torch_fwd_ms']:>12.2f} {r['pt2interp_fwd_ms']:>11.2f} "
                f"{r['fwd_ratio']:>5.3f}x {r['outputs_equal']!s:>5}"
            )
        print(
            "(load ratio: torch / pt2interp, higher is better; "
            "fwd ratio: pt2interp / torch, lower is better)"
        )
    if "tiny" in want:
        t = bench_tiny(max(a.repeats, 9))
        results["tiny"] = t
        print(
            f"\n2,000 tiny ops ({t['nodes']} nodes), µs per node: "
            f"direct {t['direct_us_per_node']:.2f}, "
            f"GraphModule {t['graph_module_us_per_node']:.2f}, "
            f"pt2interp {t['pt2interp_us_per_node']:.2f} "
            f"(pt2interp / GraphModule = {t['ratio_vs_graph_module']:.3f}x)"
        )
    if "memory" in want:
        m = bench_memory(gpt_path(), a.threads)
        results["memory"] = m
        print(
            "\npeak RSS over the post-import baseline, loading the GPT "
            f"({m['weights_mb']:.0f} MB of weights) "
            f"and running it once: torch {m['torch_peak_over_base_mb']:.0f} MB "
            f"({m['torch_x_weights']:.2f}x weights), "
            f"pt2interp {m['pt2interp_peak_over_base_mb']:.0f} MB "
            f"({m['pt2interp_x_weights']:.2f}x weights)"
        )
        for who in ("torch", "pt2interp"):
            print(
                f"  {who:<9} after the run: file-backed {m[who + '_file_mb']:.0f} MB "
                "(mapped weights, library code), "
                f"anonymous {m[who + '_anon_mb']:.0f} MB (weight copies, activations, the "
                f"{m['output_mb']:.0f} MB of logits, the parsed program)"
            )
    if "schema" in want:
        s = bench_schema(gpt_path(), a.repeats)
        results["schema"] = s
        ms = s["read_schema_ms"]
        schema_text = (
            ms
            if isinstance(ms, str)
            else (
                f"{ms:.1f} ms median in process (first call, with the import of pt2interp: "
                f"{s['read_schema_first_call_ms']:.0f} ms), torch imported: {s['torch_imported']}"
            )
        )
        print(
            f"\nread_schema on the GPT archive: {schema_text}; "
            f"whole `pt2interp info` process {s['info_process_s']:.2f} s median of 5 "
            f"(ok={s['info_ok']})"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
