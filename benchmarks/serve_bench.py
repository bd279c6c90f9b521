"""In-process serving throughput: dynamic batching (``batch_size=16``) against none
(``batch_size=1``), 32 concurrent callers each sending one-row requests.

    python -m benchmarks.serve_bench                     # mlp and small_cnn, prints a table
    python -m benchmarks.serve_bench --requests 400      # requests per caller (default 100)
    python -m benchmarks.serve_bench --threads 2         # torch intra-op threads (default 1)
    python -m benchmarks.serve_bench --cpus 0            # pin the process to CPU 0 (Linux)
    python -m benchmarks.serve_bench --handoff plain     # the server's hand-off: plain or fast
    python -m benchmarks.serve_bench --http              # over HTTP, against KServe, with wrk

``--http`` measures something else: ``pt2interp serve`` (batching off and on) and KServe's model
server as subprocesses, loaded over HTTP by ``wrk``, quiet and with another process holding a
core. It lives in ``benchmarks/serve_http_bench.py``, whose docstring says what it does and
what its figures mean (``python -m benchmarks.serve_bench --http --help`` lists its options).
What follows is the in-process benchmark, the default.

Models:

* ``mlp``: the zoo's ``dynamic_batch_mlp`` (the zoo ``mlp``, exported with a dynamic batch
  dimension 1..1024).
* ``small_cnn``: the zoo ``small_cnn`` module with the zoo's seeded weights, exported here with
  ``torch.export.Dim("batch", min=1, max=1024)`` into a temporary folder, because the zoo
  archive has a static batch of 2, where batching can put at most 2 rows in a run.
* ``small_cnn (static 2)``: the zoo archive itself, for comparison. With batching its runs hold
  at most 2 rows (padded when short); without, each caller pads its row to 2 itself.

Each figure is the median of interleaved timed rounds (batch_size 1, then 16, then 1, ...: both
see the same machine load) after a warm-up; the speed-ups are medians of the ratios within each
pair of adjacent rounds, so that drift in the machine's speed between rounds cancels. Rounds run
with ``torch.set_num_threads`` fixed, callers started together and each sending its requests one
after the other (a closed loop, as 32 clients of an HTTP server would). Every answer is checked
against a direct call on the same row. These machines are shared and noisy: read the ratios, not
the absolute times. The CPU columns give the process CPU time (all threads) per request: on a
busy machine, where wall-clock throughput depends on what else runs, their ratio is another
estimate of the speed-up. ``steal`` is the share of the machine's CPU time the hypervisor gave to
other guests while the model's rounds ran (``/proc/stat``; n/a off Linux).

Before the table it prints what one thread waking another costs on this machine (a lock passed
back and forth, both threads on one CPU, then on two): every request needs at least one such
wake-up, its caller's, however large the batch. ``--handoff`` picks how requests and answers
pass between threads (:mod:`pt2interp.serve.handoff`; default: ``fast`` where the GIL is on).
Figures, and what they say about the wake-ups and the hand-off: ``benchmarks/NOTES.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pt2interp  # noqa: E402 - after the path is set
from pt2interp.serve import Server  # noqa: E402
from pt2interp.serve.handoff import ENV_VAR, KINDS, handoff_kind  # noqa: E402

CALLERS = 32


def export_dynamic_small_cnn(folder: Path) -> Path:
    """The zoo ``small_cnn`` (same seeded weights) exported with a dynamic batch dimension."""
    from fixtures.zoo import ZOO

    entry = ZOO["small_cnn"]
    module = entry.module()
    (x,), _ = entry.inputs()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, (x,), dynamic_shapes={"x": {0: batch}})
    path = folder / "small_cnn_dynamic_batch.pt2"
    torch.export.save(program, str(path))
    return path


def wake_up_us(cpus: tuple[int, int] | None, round_trips: int = 5000) -> float:
    """Microseconds for one thread to wake another blocked on a lock, the two pinned to ``cpus``
    (the same CPU twice, or two CPUs, of this process's; None: wherever the scheduler puts
    them, the only choice off Linux)."""
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()
    ready = threading.Barrier(2)

    def pin(which: int) -> None:
        if cpus is not None:
            os.sched_setaffinity(0, {cpus[which]})  # 0: the calling thread

    def other() -> None:
        pin(1)
        ready.wait()
        for _ in range(round_trips):
            ping.acquire()
            pong.release()

    allowed = os.sched_getaffinity(0) if cpus is not None else None
    thread = threading.Thread(target=other, daemon=True)
    thread.start()
    pin(0)
    try:
        ready.wait()
        t0 = time.perf_counter()
        for _ in range(round_trips):
            ping.release()
            pong.acquire()
        elapsed = time.perf_counter() - t0
    finally:
        if cpus is not None:
            os.sched_setaffinity(0, allowed)
        thread.join()
    return 1e6 * elapsed / (2 * round_trips)


def describe_wake_ups(cpus: list[int] | None) -> str:
    """One line: the wake-up cost on one CPU and across two of ``cpus`` (this process's; None
    where threads cannot be pinned), and unpinned."""
    parts = []
    if cpus:
        parts.append(f"{wake_up_us((cpus[0], cpus[0])):.1f} µs on one CPU")
    if cpus and len(cpus) > 1:
        parts.append(f"{wake_up_us((cpus[0], cpus[1])):.1f} µs on two CPUs")
    parts.append(f"{wake_up_us(None):.1f} µs unpinned")
    return "one thread waking another: " + ", ".join(parts)


def cpu_ticks() -> tuple[int, int] | None:
    """(all, stolen) CPU ticks of the machine so far, from ``/proc/stat`` (Linux; None elsewhere).
    Stolen ticks are those the hypervisor gave to other guests while ours wanted to run."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: counted in user/nice]
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> str:
    """The stolen share of the ticks between two :func:`cpu_ticks` readings, as a percentage."""
    if before is None or after is None or after[0] == before[0]:
        return "n/a"
    return f"{100 * (after[1] - before[1]) / (after[0] - before[0]):.0f}%"


def run_callers(server: Server, rows: list[torch.Tensor], direct, static_rows: int | None) -> dict:
    """CALLERS threads share ``rows`` round-robin; returns throughput and latency figures."""
    latencies: list[list[float]] = [[] for _ in range(CALLERS)]
    answers: dict[int, torch.Tensor] = {}
    start = threading.Barrier(CALLERS + 1)

    def caller(k: int) -> None:
        start.wait()
        mine = latencies[k]
        for i in range(k, len(rows), CALLERS):
            t0 = time.perf_counter()
            answers[i] = server.predict(rows[i])
            mine.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(CALLERS)]
    for t in threads:
        t.start()
    before = server.info()
    start.wait()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    after = server.info()
    # every answer against a direct call on its own row (padded like the server where static)
    for i, x in enumerate(rows):
        ref_in = torch.cat([x] * static_rows) if static_rows else x
        want = direct(ref_in)[:1]
        if not torch.allclose(answers[i], want, rtol=1e-4, atol=1e-5):
            raise AssertionError(f"request {i} got a wrong answer")
    flat = sorted(v for lat in latencies for v in lat)
    runs = after["batch_count"] - before["batch_count"]
    return {
        "rps": len(rows) / elapsed,
        "cpu_us": 1e6 * cpu / len(rows),
        "p50_ms": 1000 * flat[len(flat) // 2],
        "p99_ms": 1000 * flat[min(len(flat) - 1, int(len(flat) * 0.99))],
        "rows_per_run": len(rows) / runs,
    }


def measure(
    path: Path, sample_shape: tuple[int, ...], requests_each: int, repeats: int
) -> dict[int, dict]:
    """Figures for batch_size 1 and 16 on one model, their timed rounds interleaved (1, 16, 1,
    16, ...) so that both see the same machine load; medians over ``repeats`` rounds."""
    direct = pt2interp.load(path)
    servers = {
        bs: Server(path, name=f"bench-{path.stem}-{bs}", batch_size=bs, batch_timeout_ms=2)
        for bs in (1, 16)
    }
    static_rows = servers[16].layout.static_rows
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randn(1, *sample_shape, generator=gen) for _ in range(CALLERS * requests_each)]
    inputs = {
        16: rows,
        # without batching a static program takes only full batches: each caller pads its own
        1: [torch.cat([r] * static_rows) for r in rows] if static_rows else rows,
    }
    rounds: dict[int, list[dict]] = {1: [], 16: []}
    try:
        for bs, server in servers.items():  # warm-up
            run_callers(
                server, inputs[bs][: CALLERS * 5], direct, static_rows if bs == 16 else None
            )
        for _ in range(repeats):
            for bs, server in servers.items():
                rounds[bs].append(
                    run_callers(server, inputs[bs], direct, static_rows if bs == 16 else None)
                )
    finally:
        for server in servers.values():
            server.shutdown()
    figures = {
        bs: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for bs, results in rounds.items()
    }
    pairs = list(zip(rounds[1], rounds[16]))
    figures["speedup"] = statistics.median(b["rps"] / a["rps"] for a, b in pairs)
    figures["cpu_ratio"] = statistics.median(a["cpu_us"] / b["cpu_us"] for a, b in pairs)
    return figures


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--http" in argv:
        # its own options: the HTTP benchmark parses everything but --http itself
        from benchmarks import serve_http_bench

        return serve_http_bench.main([a for a in argv if a != "--http"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--http",
        action="store_true",
        help="the HTTP benchmark instead (benchmarks/serve_http_bench.py; "
        "--http --help for its options)",
    )
    parser.add_argument(
        "--requests", type=int, default=100, help="requests per caller (default 100)"
    )
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed rounds per figure; the median is shown"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--no-static", action="store_true", help="skip the static small_cnn row")
    parser.add_argument("--cpus", help="pin the process to these CPUs first, e.g. 0 or 0,1 (Linux)")
    parser.add_argument(
        "--handoff",
        choices=KINDS,
        help="the servers' hand-off (sets PT2INTERP_HANDOFF; default: fast where the GIL is on)",
    )
    args = parser.parse_args(argv)
    if args.handoff:
        os.environ[ENV_VAR] = args.handoff
    if args.cpus:
        if not hasattr(os, "sched_setaffinity"):
            parser.error("--cpus needs os.sched_setaffinity (Linux)")
        ours = os.sched_getaffinity(0)
        try:
            wanted = {int(c) for c in args.cpus.split(",")}
        except ValueError:
            parser.error(
                f"--cpus {args.cpus!r}: give CPU numbers separated by commas, e.g. 0 or 0,1"
            )
        if not wanted <= ours:
            parser.error(f"--cpus {args.cpus}: this process may use CPUs {sorted(ours)} only")
        os.sched_setaffinity(0, wanted)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        models = [
            ("mlp", REPO / "fixtures" / "zoo" / "dynamic_batch_mlp.pt2", (16,)),
            ("small_cnn", export_dynamic_small_cnn(Path(tmp)), (3, 16, 16)),
        ]
        if not args.no_static:
            models.append(
                ("small_cnn (static 2)", REPO / "fixtures" / "zoo" / "small_cnn.pt2", (3, 16, 16))
            )
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), "
            f"{CALLERS} callers x {args.requests} one-row requests, batch_timeout_ms=2, "
            f"median of {args.repeats}, hand-off {handoff_kind()}"
        )
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else None
        print(f"CPUs: {cpus if cpus is not None else os.cpu_count()}; {describe_wake_ups(cpus)}")
        header = (
            "| model | batch_size=1 req/s | batch_size=16 req/s | speed-up | rows/run (16) "
            "| p50 / p99 ms (1) | p50 / p99 ms (16) | CPU µs/req (1 / 16) | CPU ratio | steal |"
        )
        lines = [header, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for label, path, shape in models:
            ticks = cpu_ticks()
            figures = measure(path, shape, args.requests, args.repeats)
            steal = steal_share(ticks, cpu_ticks())
            one, sixteen = figures[1], figures[16]
            ratio = figures["speedup"]
            lines.append(
                f"| {label} | {one['rps']:,.0f} | {sixteen['rps']:,.0f} | {ratio:.1f}x "
                f"| {sixteen['rows_per_run']:.1f} | {one['p50_ms']:.1f} / {one['p99_ms']:.1f} "
                f"| {sixteen['p50_ms']:.1f} / {sixteen['p99_ms']:.1f} "
                f"| {one['cpu_us']:.0f} / {sixteen['cpu_us']:.0f} "
                f"| {figures['cpu_ratio']:.1f}x | {steal} |"
            )
            print(lines[-1], flush=True)
        print()
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
