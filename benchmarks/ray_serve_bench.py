"""HTTP throughput of ``pt2interp serve --ray`` with 1 and 2 replicas, next to plain
``pt2interp serve`` (uvicorn), all loaded by ``wrk`` as in :mod:`benchmarks.serve_http_bench`.

    python -m benchmarks.ray_serve_bench                      # 2 rounds, 10 s per cell (~8 min)
    python -m benchmarks.ray_serve_bench --seconds 3 --rounds 1 --concurrency 16   # a smoke run

Servers (one at a time, each a subprocess on a free port, every one with ``--batch-size 16
--batch-timeout-ms 2 --threads 1``, serving the zoo's ``dynamic_batch_mlp`` as ``mlp``):

* ``uvicorn``: ``pt2interp serve``, one process;
* ``ray r=1`` and ``ray r=2``: ``pt2interp serve --ray --replicas N`` on a local Ray cluster
  the command starts (Ray's HTTP proxy in front, each replica its own process and batching).

Each cell sends 1-row requests from ``c`` keep-alive connections for ``--seconds`` after a
2 s warm-up; answers are checked against ``torch.export.load(path).module()`` before timing.
Figures are medians over ``--rounds`` (servers interleaved). ``server CPU ms/req`` counts the
server command's whole process tree: for Ray that is the proxy, the controller, the replicas
and Ray's own daemons too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serve_http_bench import (
    MODEL,
    NAME,
    WRK_SCRIPT,
    RunningServer,
    ServerSpec,
    check_answers,
    free_port,
    request_body,
    run_wrk,
)


def specs() -> list[ServerSpec]:
    common = [sys.executable, "-m", "pt2interp.cli", "serve", f"{NAME}={MODEL}"]
    common += ["--port", "{port}", "--batch-size", "16", "--batch-timeout-ms", "2"]
    common += ["--threads", "1"]
    return [
        ServerSpec("uvicorn", [*common, "--log-level", "warning"], sys.executable),
        ServerSpec("ray r=1", [*common, "--ray", "--replicas", "1"], sys.executable),
        ServerSpec("ray r=2", [*common, "--ray", "--replicas", "2"], sys.executable),
    ]


def wait_serving(server: RunningServer, timeout_s: float = 180.0) -> None:
    """Ready, and for Ray every replica up: the command prints "serving" once they all are."""
    server.wait_ready(timeout_s)
    deadline = time.monotonic() + timeout_s
    while "serving " not in server.log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.spec.key} never said it was serving")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="timed seconds per cell")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, servers interleaved")
    parser.add_argument("--concurrency", default="16,64", help="wrk connections, comma-separated")
    parser.add_argument("--wrk", default="wrk", help="the wrk binary")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    x = torch.randn(1, 16, generator=torch.Generator().manual_seed(0))
    body = request_body(x)
    want = {1: torch.export.load(str(MODEL)).module()(x)}
    cells: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "body.lua"
        script.write_text(WRK_SCRIPT.format(body=body))
        for round_ in range(args.rounds):
            for spec in specs():
                log = Path(tmp) / f"{spec.key.replace(' ', '_')}.log"
                with RunningServer(spec, free_port(), log, None) as server:
                    started = time.monotonic()
                    wait_serving(server)
                    up_s = time.monotonic() - started
                    print(f"round {round_ + 1}: {spec.key} up in {up_s:.1f} s", flush=True)
                    check_answers(server, {1: body}, want)
                    for c in levels:
                        run_wrk(args.wrk, server, script, c, 2)
                        cell = run_wrk(args.wrk, server, script, c, args.seconds)
                        cells.setdefault((spec.key, c), []).append(cell)
                        print(
                            f"  c={c}: {cell['rps']:,.0f} req/s, server CPU "
                            f"{cell['server_cpu_ms']:.2f} ms/req, non-200 {cell['non200']}",
                            flush=True,
                        )
                    check_answers(server, {1: body}, want)

    print("\n| server | " + " | ".join(f"c={c} req/s" for c in levels) + " | CPU ms/req |")
    print("| --- | " + " | ".join("---:" for _ in levels) + " | ---: |")
    for spec in specs():
        rps = [statistics.median(r["rps"] for r in cells[spec.key, c]) for c in levels]
        cpu = [statistics.median(r["server_cpu_ms"] for r in cells[spec.key, c]) for c in levels]
        print(
            f"| {spec.key} | "
            + " | ".join(f"{v:,.0f}" for v in rps)
            + " | "
            + " / ".join(f"{v:.2f}" for v in cpu)
            + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
