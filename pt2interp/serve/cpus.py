"""How many torch threads a server's model runs should use: as many as there are CPUs that
other processes leave free, re-read every few seconds.

Why: torch's intra-op threads spin while they wait for work. On a machine where another
process holds a core, a run split over every core waits for the thread that shares its core,
and each stacked run of a batching server takes several times longer (a 2-core machine with
one core busy served 3 to 4 times fewer requests at twice the CPU per request). Threads sized
to the free CPUs avoid that, and come back when the other process ends.

Free CPUs are read from Linux's ``/proc/stat`` (all CPUs' busy time) less this process's own
CPU time (``/proc/self/stat``): what the rest of the machine used over the last interval. The
server's own threads also need a CPU (the HTTP event loop, callers), so one is left for them
where there are two or more. Elsewhere (no ``/proc``) the count stays at what torch chose.

>>> chooser = ThreadChooser(cpus=4, interval_s=0.0)
>>> (chooser.threads_for(busy_elsewhere=0.0), chooser.threads_for(busy_elsewhere=1.0),
...  chooser.threads_for(3.9))
(3, 2, 1)
"""

from __future__ import annotations

import os
import time

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _machine_busy_s() -> float | None:
    """Seconds of CPU time every CPU has spent busy since boot (None off Linux)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice: busy is all but idle
    # and iowait (guest time is already in user)
    values = [int(v) for v in fields[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICKS


def _own_busy_s() -> float:
    times = os.times()
    return times.user + times.system


class ThreadChooser:
    """Re-reads the free CPUs at most every ``interval_s`` and says how many threads to use."""

    def __init__(self, cpus: int | None = None, interval_s: float = 2.0):
        self.cpus = cpus or available_cpus()
        self.interval_s = interval_s
        self._last: tuple[float, float, float] | None = None  # (monotonic, machine busy, own busy)
        self.threads: int | None = None

    def threads_for(self, busy_elsewhere: float) -> int:
        """Threads for a model run when other processes keep ``busy_elsewhere`` CPUs busy."""
        free = self.cpus - busy_elsewhere
        spare = free - 1 if self.cpus > 1 else free  # one for the server's other threads
        return max(1, min(self.cpus, int(spare + 0.5)))

    def update(self) -> int | None:
        """The thread count for now (None: not known yet, or not measurable here)."""
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.interval_s:
            return self.threads
        machine = _machine_busy_s()
        if machine is None:
            return None
        own = _own_busy_s()
        if self._last is not None:
            then, machine_then, own_then = self._last
            elapsed = now - then
            if elapsed > 0:
                elsewhere = max(0.0, (machine - machine_then) - (own - own_then)) / elapsed
                self.threads = self.threads_for(elsewhere)
        self._last = (now, machine, own)
        return self.threads
