"""How fast ``pt2interp.read_schema`` describes a large archive, and how much memory it takes.

    python -m benchmarks.read_schema_bench                  # builds a ~1.07 GB archive once
    python -m benchmarks.read_schema_bench --path big.pt2   # any archive
    python -m benchmarks.read_schema_bench --repeats 9

The archive is an MLP of four 8192x8192 Linear layers (268M float32 parameters, 1.07 GB),
exported and saved by the installed torch into ``$PT2INTERP_CACHE/bench/`` (default
``~/.cache/pt2interp/bench/``), outside the repository; later runs reuse it. Measurements
run in a fresh Python process that imports only pt2interp: the first call (cold), the median
of ``--repeats`` further calls, peak RSS before and after (``resource.getrusage``), and
whether torch got imported. Building the archive needs torch; measuring does not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Run in the fresh process: prints one JSON object.
_MEASURE = r"""
import json, resource, statistics, sys, time
import pt2interp

path, repeats = sys.argv[1], int(sys.argv[2])
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
schema = pt2interp.read_schema(path)
first = time.perf_counter() - t
times = []
for _ in range(repeats):
    t = time.perf_counter()
    pt2interp.read_schema(path)
    times.append(time.perf_counter() - t)
print(json.dumps({
    "first_s": first,
    "median_s": statistics.median(times),
    "min_s": min(times),
    "max_s": max(times),
    "rss_before_kib": rss_before,
    "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "torch_imported": "torch" in sys.modules,
    "parameters": schema.totals.parameter_count,
    "weight_bytes": schema.totals.total_bytes,
    "nodes": sum(schema.op_histogram.values()),
}))
"""


def cache_dir() -> Path:
    root = os.environ.get("PT2INTERP_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "pt2interp"
    return base / "bench"


def build_archive(path: Path, width: int = 8192, layers: int = 4) -> None:
    """Export ``layers`` Linear(width, width) layers with ReLUs between them and save to
    ``path``."""
    import torch

    class WideMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(layers))

        def forward(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i < layers - 1:
                    x = torch.relu(x)
            return x

    torch.manual_seed(0)
    with torch.no_grad():
        module = WideMLP().eval()
        ep = torch.export.export(module, (torch.randn(2, width),))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".partial-" + path.name)  # torch wants the .pt2 suffix
    torch.export.save(ep, tmp)
    os.replace(tmp, path)  # only a complete archive ever has the final name


def measure(path: Path, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), str(repeats)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", type=Path, help="benchmark this archive instead of the generated one")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls after the first (median)")
    ap.add_argument(
        "--build", type=Path, help=argparse.SUPPRESS
    )  # internal: build the archive and exit
    args = ap.parse_args(argv)
    if args.build:
        build_archive(args.build)
        return 0
    path = args.path
    if path is None:
        path = cache_dir() / "wide_mlp_1gb.pt2"
        if not path.exists():
            print(f"building {path} (once) ...", file=sys.stderr)
            # in a child process: a fork inherits its parent's peak RSS, and building holds
            # the 1 GB of weights, which would then show up as the measurement's peak
            subprocess.run(
                [sys.executable, "-m", "benchmarks.read_schema_bench", "--build", str(path)],
                check=True,
                cwd=REPO,
            )
    r = measure(path, args.repeats)
    size = path.stat().st_size
    ms = {k: r[k] * 1e3 for k in ("first_s", "median_s", "min_s", "max_s")}
    rss_mib = r["rss_before_kib"] / 1024, r["rss_peak_kib"] / 1024
    rows = [
        ("archive", f"{path}"),
        (
            "size",
            (
                f"{size / 1e9:.2f} GB ({size / 2**30:.2f} GiB), {r['parameters']:,} parameters, "
                f"{r['nodes']} nodes"
            ),
        ),
        ("read_schema, first call", f"{ms['first_s']:.1f} ms"),
        (
            f"read_schema, median of {args.repeats}",
            f"{ms['median_s']:.1f} ms (min {ms['min_s']:.1f}, max {ms['max_s']:.1f})",
        ),
        ("peak RSS after import pt2interp", f"{rss_mib[0]:.1f} MiB"),
        (
            "peak RSS after read_schema",
            f"{rss_mib[1]:.1f} MiB (+{rss_mib[1] - rss_mib[0]:.1f} MiB)",
        ),
        ("torch imported", "yes" if r["torch_imported"] else "no"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
