"""HTTP serving throughput: ``pt2interp serve`` without batching and with it, against KServe's
own Python model server, all loaded by ``wrk`` over keep-alive connections.

    python -m benchmarks.serve_bench --http                # quiet, then contended (~35 min)
    python -m benchmarks.serve_bench --http --seconds 3 --rounds 1    # a shorter full run
    python -m benchmarks.serve_bench --http --quick        # smoke check: c=1, c=64, 1 row, 3 s
    python -m benchmarks.serve_bench --http --contended    # only with a busy process on a core
    python -m benchmarks.serve_bench --http --json out.json   # every figure, every round
    bash benchmarks/setup_kserve.sh                        # once: KServe's venv (see below)

Servers, each a subprocess on a free loopback port, started one at a time (never two at once:
on a 2-core machine two would take each other's CPU):

* ``pt2interp bs=1``: ``pt2interp serve --batch-size 1`` (every request runs the model alone).
* ``pt2interp bs=16``: ``pt2interp serve --batch-size 16 --batch-timeout-ms 2``, the README's
  recommended configuration (requests that arrive together share one model run).
* ``kserve``: KServe's ``kserve.ModelServer`` (one uvicorn worker, gRPC off) with the custom
  ``kserve.Model`` of ``benchmarks/kserve_model.py``, whose ``predict`` runs
  ``torch.export.load(path).module()`` on the decoded v2 ``InferRequest``. KServe pins its own
  fastapi, uvicorn and pydantic, so it runs from its own venv, ``benchmarks/.venv-kserve``,
  which ``bash benchmarks/setup_kserve.sh`` makes (``--kserve-python`` names another python;
  where there is none the run says how to make it and measures pt2interp alone).

Every server runs ``--threads`` torch intra-op threads (default 1: ``OMP_NUM_THREADS``, and
``pt2interp serve --threads`` where the CLI has it; ``--threads auto`` leaves each server its
own choice) and without a log line per request. They serve the zoo's ``dynamic_batch_mlp`` (input
``x``, FP32 ``[batch, 16]``; output FP32 ``[batch, 8]``) as ``mlp``, and are sent 1-row and
32-row requests, each a fixed JSON body POSTed to ``/v2/models/mlp/infer``.

Load is ``wrk`` (Debian package ``wrk``), one client thread holding ``c`` keep-alive
connections, each sending its next request as soon as the last is answered (a closed loop),
for ``c`` = 1, 16 and 64. Every (server, rows, c) cell runs ``--seconds`` (default 15) after a
``--warmup`` (default 2 s) at the same load. The servers are interleaved over ``--rounds``
(default 3: in each round every server is started, runs all its cells and is stopped) and each
figure is the median over rounds; the ratios are medians of the ratios within each round, so
drift in the machine's speed between rounds cancels. Before its first cell and after its last,
each server's answers to the 1-row and 32-row bodies are checked against
``torch.export.load(path).module()(x)`` (``torch.allclose``, rtol 1e-4, atol 1e-5: a batched
run may round differently), so that no wrong answer is ever timed.

Columns:

* ``req/s``: 200 answers per second of the timed run, as wrk counts them.
* ``server CPU ms/req``: the server process's CPU time (user + system, its children's included,
  from ``/proc/<pid>/stat``) over the timed run, divided by the requests wrk completed: what a
  request costs the server whatever else the machine runs. Readings are in clock ticks (10 ms),
  small next to a run's total.
* ``wrk CPU ms/req``: the same for the load generator (at c = 1 / 16 / 64): on a 2-core machine
  the client takes CPU the server would otherwise have.
* ``non-200``: answers with another status plus socket errors (connect, read, write, timeout),
  summed over the server's cells and rounds; any at all makes the row's figures suspect.

Modes: ``quiet`` runs with the machine as it is; ``contended`` with one busy process spinning
on a core for the whole mode (pinned to the second CPU where there are two or more), as when
another program holds a core. ``steal`` is the share of the machine's CPU time the hypervisor
gave to other guests during the mode (``/proc/stat``), and ``load average`` the machine's
1-minute load average at its start and end: where it is well above what the benchmark itself
runs (about 2, 3 contended) other work shared the CPUs. These machines are shared and noisy:
read the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

# run as a script too (python benchmarks/serve_http_bench.py): the repository's packages first
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serve_bench import cpu_ticks, steal_share

REPO = Path(__file__).resolve().parent.parent

MODEL = REPO / "fixtures" / "zoo" / "dynamic_batch_mlp.pt2"
NAME = "mlp"
FEATURES = 16
KSERVE_PYTHON = REPO / "benchmarks" / ".venv-kserve" / "bin" / "python"
RTOL, ATOL = 1e-4, 1e-5
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
WRK_INSTALL = "apt-get update -qq && apt-get install -y -qq wrk"

# wrk's Lua script: one fixed body; done() prints the summary as one JSON line, so that
# nothing depends on the layout of wrk's human-readable report
WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {{"requests": %.0f, "duration_us": %.0f, "connect": %.0f, ' ..
    '"read": %.0f, "write": %.0f, "status": %.0f, "timeout": %.0f, "p50_us": %.0f, ' ..
    '"p99_us": %.0f}}\\n', summary.requests, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class ServerSpec:
    key: str  # the label in tables and JSON
    argv: list  # the command, with "{port}" where the port goes
    python: str  # the interpreter it runs on (for the version line)


@dataclass
class Cell:
    """One (server, rows, concurrency) cell: its figures in each round."""

    rounds: list = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.rounds)


# -- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of process ``root`` and its live descendants so far,
    each with the children it has reaped (``cutime``, ``cstime``)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))):
            parents.setdefault(int(fields[1]), []).append(int(entry))
    ticks, todo = 0, [root]
    while todo:
        pid = todo.pop()
        fields = _stat_fields(pid)
        if fields:
            # after the name: state ppid ... utime(14) stime cutime cstime, counted from 1
            ticks += sum(int(v) for v in fields[11:15])
        todo.extend(parents.get(pid, ()))
    return ticks / CLK_TCK


class RunningServer:
    """A server subprocess on ``port``, its output in ``log``; a context manager that stops it."""

    def __init__(self, spec: ServerSpec, port: int, log: Path, env: dict):
        self.spec, self.port, self.log = spec, port, log
        argv = [a.replace("{port}", str(port)) for a in spec.argv]
        with open(log, "wb") as out:
            # a session of its own: a Ctrl-C meant for the benchmark reaches the server only
            # through stop(), once
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.key} exited with {self.proc.returncode} before "
                    f"it was ready:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url(f"/v2/models/{NAME}/ready"), timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.spec.key} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def cpu_s(self) -> float:
        return tree_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # both servers shut down cleanly on it
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_spinner(cpus: list[int]) -> subprocess.Popen:
    """A process that spins on one CPU (the second of ours where there are two or more)."""
    pin = f"import os; os.sched_setaffinity(0, {{{cpus[1]}}})\n" if len(cpus) > 1 else ""
    return subprocess.Popen([sys.executable, "-c", pin + "while True:\n    pass\n"])


# -- requests ------------------------------------------------------------------------------------


def request_body(x: torch.Tensor) -> str:
    # float32 values as Python floats: their repr reads back as exactly the same float32
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.flatten().tolist(),
                }
            ]
        }
    )


def check_answers(server: RunningServer, bodies: dict, want: dict) -> None:
    """Each body's answer against the direct run of the exported program on its input."""
    for rows, body in bodies.items():
        req = urllib.request.Request(
            server.url(f"/v2/models/{NAME}/infer"),
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(
                f"{server.spec.key}, {rows} rows: HTTP {exc.code}: {exc.read()[:500]!r}"
            ) from None
        out = answer["outputs"][0]
        got = torch.tensor(out["data"], dtype=torch.float32).reshape(out["shape"])
        if got.shape != want[rows].shape:
            raise AssertionError(
                f"{server.spec.key}, {rows} rows: answer of shape "
                f"{list(got.shape)}, want {list(want[rows].shape)}"
            )
        if not torch.allclose(got, want[rows], rtol=RTOL, atol=ATOL):
            worst = (got - want[rows]).abs().max().item()
            raise AssertionError(
                f"{server.spec.key}, {rows} rows: wrong answer (largest "
                f"difference {worst:.3g}; rtol {RTOL}, atol {ATOL})"
            )


def run_wrk(wrk: str, server: RunningServer, script: Path, connections: int, seconds: int) -> dict:
    """One wrk run; its figures plus the server's and wrk's CPU seconds during it."""
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        server.url(f"/v2/models/{NAME}/infer"),
    ]
    # wrk's CPU: this process's reaped children gain exactly wrk's (the servers and the
    # spinner are not reaped while it runs)
    client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server0 = server.cpu_s()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    server_s = server.cpu_s() - server0
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_s = (client1.ru_utime - client0.ru_utime) + (client1.ru_stime - client0.ru_stime)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
            f"server log:\n{server.log_tail()}"
        )
    s = json.loads(lines[-1][len("BENCH ") :])
    requests = max(1.0, s["requests"])
    errors = s["connect"] + s["read"] + s["write"] + s["timeout"]
    return {
        "requests": int(s["requests"]),
        "rps": (s["requests"] - s["status"]) / (s["duration_us"] / 1e6),
        "non200": int(s["status"] + errors),
        "status_errors": int(s["status"]),
        "socket_errors": int(errors),
        "server_cpu_ms": 1000 * server_s / requests,
        "client_cpu_ms": 1000 * client_s / requests,
        "p50_ms": s["p50_us"] / 1000,
        "p99_ms": s["p99_us"] / 1000,
    }


# -- the run -------------------------------------------------------------------------------------


def server_specs(kserve_python: str | None, threads: str) -> list[ServerSpec]:
    common = [
        "-m",
        "pt2interp.cli",
        "serve",
        f"{NAME}={MODEL}",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--log-level",
        "warning",
    ]
    if (
        threads != "auto"
        and "--threads"
        in subprocess.run(
            [sys.executable, *common[:3], "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    ):
        # its own choice of threads would override OMP_NUM_THREADS
        common += ["--threads", threads]
    specs = [
        ServerSpec(
            "pt2interp bs=1", [sys.executable, *common, "--batch-size", "1"], sys.executable
        ),
        ServerSpec(
            "pt2interp bs=16",
            [sys.executable, *common, "--batch-size", "16", "--batch-timeout-ms", "2"],
            sys.executable,
        ),
    ]
    if kserve_python:
        script = str(REPO / "benchmarks" / "kserve_model.py")
        specs.append(
            ServerSpec(
                "kserve",
                [
                    kserve_python,
                    script,
                    "--model_path",
                    str(MODEL),
                    "--model_name",
                    NAME,
                    "--http_port",
                    "{port}",
                    "--workers",
                    "1",
                    "--enable_grpc",
                    "false",
                ],
                kserve_python,
            )
        )
    return specs


def stack_of(python: str) -> str:
    """What the interpreter's uvicorn runs on: versions, event loop, HTTP parser."""
    code = (
        "import importlib.metadata as m, importlib.util as u\n"
        "v = lambda p: m.version(p) if u.find_spec(p.replace('-', '_')) else None\n"
        "print(f\"uvicorn {v('uvicorn')}, fastapi {v('fastapi')}, torch {v('torch')}, \"\n"
        "      f\"kserve {v('kserve')}, loop {'uvloop' if v('uvloop') else 'asyncio'}, \"\n"
        "      f\"http {'httptools' if v('httptools') else 'h11'}\")"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip().replace(", kserve None", "") or f"unknown ({done.stderr.strip()})"


def serving_code() -> str:
    """A short digest of pt2interp's serving code as it is on disk now (``pt2interp/serve/``
    and the CLI): each server start reads it afresh, so a change while the benchmark runs would
    put different code in different rounds."""
    digest = hashlib.sha256()
    serve = REPO / "pt2interp" / "serve"
    for path in sorted([*serve.glob("*.py"), REPO / "pt2interp" / "cli.py"]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """The machine's 1-minute load average (``/proc/loadavg``): other people's work shows here."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except (OSError, IndexError):
        return "n/a"


def run_mode(
    mode: str,
    specs: list[ServerSpec],
    args,
    wrk: str,
    scripts: dict,
    bodies: dict,
    want: dict,
    logs: Path,
    env: dict,
) -> dict:
    """Every cell of one mode, rounds interleaved; returns its figures."""
    cells = {
        (s.key, rows, c): Cell() for s in specs for rows in args.rows for c in args.concurrency
    }
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    spinner = start_spinner(cpus) if mode == "contended" else None
    ticks, load = cpu_ticks(), load_average()
    try:
        for rnd in range(args.rounds):
            for spec in specs:
                with RunningServer(
                    spec, free_port(), logs / f"{mode}-{rnd}-{spec.key}.log".replace(" ", "_"), env
                ) as server:
                    server.wait_ready()
                    check_answers(server, bodies, want)
                    for rows in args.rows:
                        for c in args.concurrency:
                            if args.warmup:
                                run_wrk(wrk, server, scripts[rows], c, args.warmup)
                            figures = run_wrk(wrk, server, scripts[rows], c, args.seconds)
                            cells[spec.key, rows, c].rounds.append(figures)
                            print(
                                f"  {mode} round {rnd + 1}/{args.rounds} {spec.key:<16} "
                                f"rows={rows:<2} c={c:<2}: {figures['rps']:8,.0f} req/s, "
                                f"server {figures['server_cpu_ms']:.2f} ms CPU/req, "
                                f"{figures['non200']} non-200",
                                flush=True,
                            )
                    check_answers(server, bodies, want)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return {
        "steal": steal_share(ticks, cpu_ticks()),
        "load": f"{load} -> {load_average()}",
        "cells": cells,
    }


def ratio(cells: dict, a: tuple, b: tuple, key: str = "rps") -> float | None:
    """Median over rounds of cell ``a``'s ``key`` over cell ``b``'s, in the same round."""
    if a not in cells or b not in cells:
        return None
    pairs = zip(cells[a].rounds, cells[b].rounds)
    return statistics.median(x[key] / y[key] for x, y in pairs if y[key])


def ratios(cells: dict, args) -> dict:
    out = {}
    big = max(args.concurrency)
    for rows in args.rows:
        r = ratio(cells, ("pt2interp bs=16", rows, big), ("kserve", rows, big))
        if r is not None:
            out[f"bs16_vs_kserve_rows{rows}_c{big}"] = {
                "rps": r,
                "server_cpu_ms": ratio(
                    cells, ("pt2interp bs=16", rows, big), ("kserve", rows, big), "server_cpu_ms"
                ),
            }
        for c in args.concurrency:
            out[f"bs16_vs_bs1_rows{rows}_c{c}"] = {
                "rps": ratio(cells, ("pt2interp bs=16", rows, c), ("pt2interp bs=1", rows, c)),
                "server_cpu_ms": ratio(
                    cells,
                    ("pt2interp bs=16", rows, c),
                    ("pt2interp bs=1", rows, c),
                    "server_cpu_ms",
                ),
            }
    return out


def table(mode: str, result: dict, specs: list[ServerSpec], args) -> str:
    cells, cs = result["cells"], args.concurrency
    head = (
        ["server", "rows"]
        + [f"c={c} req/s" for c in cs]
        + [f"server CPU ms/req c={c}" for c in cs]
        + [f"wrk CPU ms/req c={' / '.join(map(str, cs))}", "non-200"]
    )
    lines = [
        f"{mode}: steal {result['steal']}, load average {result['load']} (start -> end)",
        "| " + " | ".join(head) + " |",
        "| --- | ---: |" + " ---: |" * (len(head) - 2),
    ]
    for spec in specs:
        for rows in args.rows:
            row = [cells[spec.key, rows, c] for c in cs]
            non200 = sum(r["non200"] for cell in row for r in cell.rounds)
            lines.append(
                "| "
                + " | ".join(
                    [spec.key, str(rows)]
                    + [f"{cell.median('rps'):,.0f}" for cell in row]
                    + [f"{cell.median('server_cpu_ms'):.3f}" for cell in row]
                    + [
                        " / ".join(f"{cell.median('client_cpu_ms'):.3f}" for cell in row),
                        str(non200),
                    ]
                )
                + " |"
            )
    big = max(cs)
    for rows in args.rows:
        r = result["ratios"].get(f"bs16_vs_kserve_rows{rows}_c{big}")
        if r:
            lines.append(
                f"pt2interp bs=16 vs kserve, {rows} row(s), c={big}: "
                f"{r['rps']:.2f}x req/s, {r['server_cpu_ms']:.2f}x server CPU per request"
            )
    for rows in args.rows:
        parts = []
        for c in cs:
            r = result["ratios"][f"bs16_vs_bs1_rows{rows}_c{c}"]
            parts.append(f"c={c} {r['rps']:.2f}x ({r['server_cpu_ms']:.2f}x CPU/req)")
        lines.append(f"pt2interp bs=16 vs bs=1, {rows} row(s): req/s " + ", ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serve_bench --http", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=int, help="timed seconds per cell (default 15)")
    parser.add_argument(
        "--warmup", type=int, help="seconds of the same load before each cell (default 2; 0: none)"
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds per figure; the median is shown (default 3)"
    )
    parser.add_argument("--concurrency", help="wrk connections, comma-separated (default 1,16,64)")
    parser.add_argument("--rows", help="rows per request, comma-separated (default 1,32)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: c=1 and c=64, 1 row, 3 s, 1 round, quiet only",
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--contended",
        action="store_true",
        help="only the contended mode (default: quiet, then contended)",
    )
    modes.add_argument("--uncontended", action="store_true", help="only the quiet mode")
    parser.add_argument(
        "--threads",
        default="1",
        help="torch intra-op threads of every server, or auto: each server's own "
        "choice (default 1)",
    )
    parser.add_argument(
        "--kserve-python",
        default=str(KSERVE_PYTHON),
        help="the python of KServe's venv (default benchmarks/.venv-kserve/bin/"
        "python, made by bash benchmarks/setup_kserve.sh)",
    )
    parser.add_argument("--no-kserve", action="store_true", help="benchmark pt2interp alone")
    parser.add_argument("--wrk", default="wrk", help="the wrk binary (default: wrk on PATH)")
    parser.add_argument("--json", type=Path, help="write every figure, every round, to this file")
    args = parser.parse_args(argv)

    quick = args.quick
    # --quick's settings, unless given
    for name, (fast, full) in {"seconds": (3, 15), "warmup": (1, 2), "rounds": (1, 3)}.items():
        if getattr(args, name) is None:
            setattr(args, name, fast if quick else full)
    try:
        args.concurrency = [
            int(c) for c in (args.concurrency or ("1,64" if quick else "1,16,64")).split(",")
        ]
        args.rows = [int(r) for r in (args.rows or ("1" if quick else "1,32")).split(",")]
    except ValueError:
        parser.error("--concurrency and --rows take whole numbers separated by commas")
    if args.threads != "auto" and not (args.threads.isdigit() and int(args.threads) >= 1):
        parser.error(f"--threads {args.threads!r}: give a number of threads, or auto")
    if (
        min(args.concurrency + args.rows) < 1
        or args.seconds < 1
        or args.rounds < 1
        or args.warmup < 0
    ):
        parser.error(
            "--concurrency, --rows, --seconds and --rounds must be at least 1, --warmup at least 0"
        )
    run_modes = (
        ["contended"]
        if args.contended
        else ["quiet"]
        if args.uncontended or quick
        else ["quiet", "contended"]
    )

    wrk = shutil.which(args.wrk)
    if wrk is None:
        print(
            f"wrk not found: install it (Debian/Ubuntu, as root: {WRK_INSTALL}) or name it "
            "with --wrk PATH",
            file=sys.stderr,
        )
        return 2
    kserve_python = None
    if not args.no_kserve:
        if Path(args.kserve_python).exists():
            kserve_python = args.kserve_python
        else:
            print(
                f"KServe's python {args.kserve_python} not found: benchmarking pt2interp alone. "
                "Make it with: bash benchmarks/setup_kserve.sh (or pass --kserve-python PATH)",
                flush=True,
            )
    specs = server_specs(kserve_python, args.threads)

    # the reference: the exported program itself, on the very rows each body carries
    program = torch.export.load(str(MODEL)).module()
    gen = torch.Generator().manual_seed(0)
    inputs = {rows: torch.randn(rows, FEATURES, generator=gen) for rows in args.rows}
    with torch.no_grad():
        want = {rows: program(x) for rows, x in inputs.items()}
    bodies = {rows: request_body(x) for rows, x in inputs.items()}

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    wrk_version = (
        subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        .stdout.split("\n")[0]
        .strip()
    )
    code = serving_code()
    print(
        f"torch {torch.__version__} (benchmark), CPU {cpu_model()}, {os.cpu_count()} CPUs "
        f"(this process may use {cpus if cpus is not None else 'all'}); {wrk_version}; "
        f"pt2interp serving code {code}"
    )
    stacks = {spec.key: stack_of(spec.python) for spec in specs}
    for spec in specs:
        print(f"  {spec.key}: {stacks[spec.key]}")
    print(
        f"model {MODEL.relative_to(REPO)} as {NAME!r}; rows {args.rows}; concurrency "
        f"{args.concurrency}; {args.seconds} s per cell after {args.warmup} s warm-up; median of "
        f"{args.rounds} round(s); {args.threads} torch thread(s) per server; modes {run_modes}",
        flush=True,
    )

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.threads != "auto":
        env["OMP_NUM_THREADS"] = args.threads
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="serve_http_bench-") as tmp:
        tmp = Path(tmp)
        scripts = {}
        for rows, body in bodies.items():
            scripts[rows] = tmp / f"post_{rows}.lua"
            scripts[rows].write_text(WRK_SCRIPT.format(body=body))
        for mode in run_modes:
            result = run_mode(mode, specs, args, wrk, scripts, bodies, want, tmp, env)
            result["ratios"] = ratios(result["cells"], args)
            results[mode] = result
            print()
            print(table(mode, result, specs, args), flush=True)
            print()

    code_after = serving_code()
    if code_after != code:
        print(
            f"warning: pt2interp's serving code changed during the run ({code} -> "
            f"{code_after}): later rounds may have run other code than earlier ones"
        )
    if len(results) > 1:  # every mode's table together, where progress lines split them
        print("\n\n".join(table(mode, result, specs, args) for mode, result in results.items()))
    if args.json:
        report = {
            "torch": torch.__version__,
            "cpu_model": cpu_model(),
            "cpus": os.cpu_count(),
            "affinity": cpus,
            "wrk": wrk_version,
            "servers": stacks,
            "serving_code": {"start": code, "end": code_after},
            "model": str(MODEL.relative_to(REPO)),
            "settings": {
                k: getattr(args, k)
                for k in ("seconds", "warmup", "rounds", "concurrency", "rows", "threads")
            },
            "tolerance": {"rtol": RTOL, "atol": ATOL},
            "modes": {
                mode: {
                    "steal": result["steal"],
                    "load_average": result["load"],
                    "ratios": result["ratios"],
                    "cells": [
                        {
                            "server": key,
                            "rows": rows,
                            "concurrency": c,
                            "median": {k: cell.median(k) for k in cell.rounds[0]},
                            "rounds": cell.rounds,
                        }
                        for (key, rows, c), cell in result["cells"].items()
                    ],
                }
                for mode, result in results.items()
            },
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
