"""The server that ``python -m benchmarks.serve_soak`` soaks, in a process of its own (so that
its memory can be measured alone), with fault injection:

    python -m benchmarks.soak_server --port 8321          # serves until SIGTERM or Ctrl-C

It serves two models over HTTP (``uvicorn.run(create_app(servers))`` on 127.0.0.1):

* ``dynamic_batch_mlp`` (``fixtures/zoo/dynamic_batch_mlp.pt2``), ``batch_size=16``,
  ``batch_timeout_ms=2``: dynamic batching on;
* ``multi_io`` (``fixtures/zoo/multi_io.pt2``), ``batch_size=1``: batching off.

Each SIGUSR1 arms one crash: the next model run of one server (the two take turns, the MLP
first) raises :class:`InjectedCrash`, a ``BaseException`` that the worker's per-request
``except Exception`` does not catch, so it escapes the worker's loop and kills the worker, as
a fatal error in a model would. The server then fails the requests that worker held with
``WorkerCrashedError`` (HTTP 500 naming ``InjectedCrash: soak: injected crash #N``) and starts
a new worker, which reloads the model from disk. The crash is armed on the program object the
worker runs now (``server.program``, an instance attribute shadowing ``run``), so the reload,
which builds a new program, disarms it: one signal, one crash.

The process exits on SIGTERM (uvicorn's graceful shutdown, then each server's), when the
process that started it goes away, or after ``--max-seconds``, so a soak that is killed
never leaves it behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MLP = REPO / "fixtures" / "zoo" / "dynamic_batch_mlp.pt2"
MULTI_IO = REPO / "fixtures" / "zoo" / "multi_io.pt2"


class InjectedCrash(BaseException):
    """Raised by an armed model run: not an ``Exception``, so it kills the worker."""


def arm_crash(server, number: int) -> None:
    """Make the next ``run_leaves`` of ``server``'s current program raise :class:`InjectedCrash`."""
    program = server.program
    original = program.run_leaves
    fired = threading.Lock()

    def run(*args, **kwargs):
        if fired.acquire(blocking=False):
            raise InjectedCrash(f"soak: injected crash #{number}")
        return original(*args, **kwargs)

    program.run_leaves = run


def _say(text: str) -> None:
    # os.write, not print: this runs in a signal handler, which may interrupt a print in progress
    os.write(2, f"soak_server: {text}\n".encode())


def _watch_parent(parent: int, max_seconds: float) -> None:
    """SIGTERM ourselves (a graceful exit) once our parent has gone or time is up."""
    deadline = time.monotonic() + max_seconds
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(1.0)
    why = "its parent exited" if os.getppid() != parent else f"--max-seconds {max_seconds:g} passed"
    _say(f"stopping: {why}")
    os.kill(os.getpid(), signal.SIGTERM)
    # Should the graceful exit hang, do not outlive it by much.
    time.sleep(30.0)
    os._exit(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: the soak shares the CPUs)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=3600.0,
        help="exit after this long whatever happens (default 3600)",
    )
    args = parser.parse_args(argv)

    import torch
    import uvicorn

    from pt2interp.serve import Server
    from pt2interp.serve.http import create_app

    torch.set_num_threads(args.threads)
    threading.Thread(
        target=_watch_parent,
        args=(os.getppid(), args.max_seconds),
        daemon=True,
        name="soak-parent-watch",
    ).start()
    servers = [Server(MLP, batch_size=16, batch_timeout_ms=2), Server(MULTI_IO, batch_size=1)]
    injected = 0

    def on_usr1(signum, frame):
        nonlocal injected
        injected += 1
        target = servers[(injected - 1) % len(servers)]
        arm_crash(target, injected)
        _say(f"armed crash #{injected} in {target.name!r}")

    signal.signal(signal.SIGUSR1, on_usr1)
    # uvicorn shuts down gracefully on SIGTERM and SIGINT, then raises the signal again for the
    # handler it found installed: with the default one the process would die right there, its
    # servers never shut down and its status -15. Found here, the signal is only noted, and
    # the servers are shut down below.
    stopped_by = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stopped_by.append(signal.Signals(signum).name))
    try:
        # timeout_keep_alive: the soak's clients keep their connections between requests and
        # may pause a few seconds (health checks): a server closing an idle connection just
        # as a client reuses it would lose that request for reasons that are no fault of ours.
        # No access log: a soak makes hundreds of thousands of requests.
        uvicorn.run(
            create_app(servers),
            host="127.0.0.1",
            port=args.port,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=120,
            timeout_graceful_shutdown=10,
        )
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        for server in servers:
            server.shutdown(timeout=5.0)
    _say(f"exited cleanly on {', '.join(stopped_by) or 'request'} ({injected} crashes armed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
