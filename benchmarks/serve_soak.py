"""A soak of the HTTP model server: mixed good, bad and abandoned traffic for minutes on end,
with worker crashes injected, every answer checked and the server's memory watched.

    python -m benchmarks.serve_soak                        # 10 minutes, a crash every 60 s
    python -m benchmarks.serve_soak --seconds 30           # a short run
    python -m benchmarks.serve_soak --minutes 3 --json soak.json
    python -m benchmarks.serve_soak --clients 8 --crash-every 0   # fewer clients, no crashes

It starts ``python -m benchmarks.soak_server`` in a subprocess (the real uvicorn server with
``dynamic_batch_mlp``, batching on, and ``multi_io``, batching off; see that module) on a free
port of 127.0.0.1, and sends it, from ``--clients`` threads with keep-alive httpx clients:

* ~70% valid infer requests, random data for both models (1 to 64 rows for the MLP, whose batch
  dimension is dynamic; ``multi_io`` has a static batch of 5), inputs read from each model's
  ``GET /v2/models/{name}`` metadata. Each answer must be 200 with every output named, typed and
  shaped as in the metadata and equal (``torch.allclose``, rtol 1e-5, atol 1e-6) to
  ``pt2interp.load(path)`` run in this process on the same inputs, and echo the request's id.
* ~20% invalid requests: malformed JSON, non-object bodies, wrong or unknown datatypes, wrong
  element counts and shapes, unknown or missing or duplicated inputs, unknown outputs, unknown
  models and versions, model names of 1 to 15 KB, JSON nested up to 100,000 deep, an empty
  body, a declared body over the server's limit, a GET on the infer route. Each must get a 4xx
  with a JSON body ``{"error": "..."}``. (Names stay under 15 KB because uvicorn's HTTP parser,
  h11, refuses a request head that has reached 16 KB without being complete with a plain-text
  ``400 Invalid HTTP request received.`` before the application sees it: whether a longer head
  gets that or the application's JSON 404 depends on how TCP happened to deliver it.)
* ~10% clients that give up mid-request: a large request (256 to 1024 rows) sent whole on a
  raw socket that is then closed unread (half the time with a TCP reset), one closed part-way
  through its body, or httpx with a read timeout of 1 to 30 ms. Nothing is expected of
  these but that the server carries on; one answered before the timeout is checked as valid.

Every ``--crash-every`` seconds (default 60; 0: never) it sends the server SIGUSR1, which makes
the next model run of one model (the two take turns, the MLP first) kill its worker. The
requests that worker held may get a 5xx naming the injected crash: they count as
"crash-affected", not as failures, provided the crash named is one that was injected, into
that model, and hit no more requests than one run of it holds. Any other non-200 for a valid
request, a wrong answer, or no answer at all (a connection error or a 30 s timeout, for a
client that did not hang up on purpose: "lost") is a failure. The restarts the server reports
(``/v2/status`` and ``/metrics``) must equal the crashes injected.

Meanwhile it samples the server process's RSS (``VmRSS`` in ``/proc/<pid>/status``) and the
latency of ``GET /v2/health/live`` every ``--sample-every`` seconds (the latter from a small
process of its own, which this one's busy client threads cannot delay). RSS is flat when, after a
warm-up (the first minute, or the first 20% of a run shorter than 5 minutes), the RSS at the
end of the run is less than max(5%, 20 MiB) above the RSS at the start of the warmed-up
period's second half (each the median of the three samples nearest that time, so that one
large request in flight does not decide it). Health must answer 200 within 1 s every time. At
the end the server gets SIGTERM and must exit with status 0 within 20 s (it is killed
otherwise, and whatever goes wrong here; should this process itself be killed, the server
notices that its parent has gone and exits), so no server is ever left behind.

It prints the first failures found (request, answer, what was expected), a table of the
figures and a PASS/FAIL line, and exits with status 1 on FAIL; ``--json FILE`` writes the same
figures, the RSS samples and the failures as JSON. A traceback in the server's log (an exception
it did not handle) fails the run too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import torch

# run as a script too (python benchmarks/serve_soak.py): the repository's packages first
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pt2interp
from benchmarks.serve_http_bench import free_port

REPO = Path(__file__).resolve().parent.parent

MLP = "dynamic_batch_mlp"
MULTI_IO = "multi_io"
PATHS = {
    MLP: REPO / "fixtures" / "zoo" / "dynamic_batch_mlp.pt2",
    MULTI_IO: REPO / "fixtures" / "zoo" / "multi_io.pt2",
}
# The order soak_server arms crashes in (crash #n goes to CRASH_ORDER[(n - 1) % 2]) and the most
# requests one worker holds at once (batch_size requests of one row each; 1 without batching).
CRASH_ORDER = (MLP, MULTI_IO)
HELD_AT_MOST = {MLP: 16, MULTI_IO: 1}
MAX_BODY_BYTES = 16 * 1024 * 1024  # pt2interp.serve.http's default limit
RTOL, ATOL = 1e-5, 1e-6
CLIENT_TIMEOUT_S = 30.0  # no answer within this: "lost"
HEALTH_LIMIT_S = 1.0
STOP_TIMEOUT_S = 20.0  # SIGTERM to exit, before SIGKILL
MiB = 1024 * 1024
DTYPES = {
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}
OIP_OF_DTYPE = {dtype: name for name, dtype in DTYPES.items()}
CRASH_TEXT = re.compile(
    r"died while running this request \(InjectedCrash: soak: injected crash "
    r"#(\d+)\)"
)
MAX_EXAMPLES = 20  # failures kept in full (--json); the rest are counted
PRINTED_EXAMPLES = 10


# -- the server process -------------------------------------------------------------------------
def rss_bytes(pid: int) -> int | None:
    """The process's resident set size, or None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def wait_ready(proc: subprocess.Popen, base: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} while starting")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/v2/health/ready", timeout=2.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not ready within {timeout:g} s")
        time.sleep(0.25)


def stop_server(proc: subprocess.Popen) -> dict[str, Any]:
    """SIGTERM, wait; SIGKILL if it does not exit in time. Returns what happened."""
    if proc.poll() is not None:
        return {
            "exit_s": None,
            "returncode": proc.returncode,
            "killed": False,
            "already_gone": True,
        }
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
        killed = False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        killed = True
    return {
        "exit_s": time.monotonic() - started,
        "returncode": proc.returncode,
        "killed": killed,
        "already_gone": False,
    }


# -- the tally ----------------------------------------------------------------------------------
class Tally:
    """Counts from every client thread, and the first failures in full."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.invalid_kinds: Counter[str] = Counter()
        self.invalid_kinds_ok: Counter[str] = Counter()
        self.disconnect_kinds: Counter[str] = Counter()
        self.crash_hits: Counter[int] = Counter()  # injection number -> requests it failed
        self.failures: list[dict[str, Any]] = []
        self.failure_kinds: Counter[str] = Counter()
        self.latencies: list[float] = []

    def add(self, *keys: str) -> None:
        with self.lock:
            for key in keys:
                self.counts[key] += 1

    def fail(self, what: str, **details: Any) -> None:
        with self.lock:
            self.failure_kinds[what] += 1
            if len(self.failures) < MAX_EXAMPLES:
                self.failures.append({"failure": what, **details})


def _snippet(data: bytes | str | None, limit: int = 300) -> str | None:
    if data is None:
        return None
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return data if len(data) <= limit else f"{data[:limit]}... ({len(data)} chars)"


# -- valid requests -----------------------------------------------------------------------------
class Models:
    """Metadata from the server and reference programs of this process, one set per thread
    (a LoadedProgram is run by one thread at a time, as the server's worker runs it)."""

    def __init__(self, metadata: dict[str, dict]):
        self.metadata = metadata
        self._local = threading.local()

    def program(self, model: str):
        programs = getattr(self._local, "programs", None)
        if programs is None:
            programs = self._local.programs = {}
        if model not in programs:
            programs[model] = pt2interp.load(PATHS[model])
        return programs[model]

    def random_inputs(self, model: str, rows: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Random inputs as the metadata describes them, ``rows`` along every -1."""
        inputs = {}
        for spec in self.metadata[model]["inputs"]:
            shape = [rows if d == -1 else d for d in spec["shape"]]
            dtype = DTYPES[spec["datatype"]]
            if dtype == torch.bool:
                value = torch.rand(shape, generator=gen) < 0.5
            elif dtype.is_floating_point:
                value = torch.randn(shape, generator=gen).to(dtype)
            else:
                value = torch.randint(-100, 100, shape, generator=gen, dtype=dtype)
            inputs[spec["name"]] = value
        return inputs

    def reference(self, model: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        program = self.program(model)
        args, kwargs = program.bind_named(inputs)
        return program.named_outputs(program(*args, **kwargs))

    def rows_range(self, model: str) -> tuple[int, int]:
        dynamic = any(-1 in spec["shape"] for spec in self.metadata[model]["inputs"])
        return (1, 64) if dynamic else (1, 1)


def encode_inputs(inputs: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "shape": list(t.shape),
            "datatype": OIP_OF_DTYPE[t.dtype],
            "data": t.reshape(-1).tolist(),
        }
        for name, t in inputs.items()
    ]


def check_answer(
    models: Models, model: str, answer: Any, expected: dict[str, torch.Tensor], request_id: str
) -> str | None:
    """What is wrong with a 200 answer to a valid request (None: nothing)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("outputs"), list):
        return 'the answer has no "outputs" list'
    if answer.get("id") != request_id:
        return f"the answer's id is {answer.get('id')!r}, the request's {request_id!r}"
    if answer.get("model_name") != model:
        return f"the answer's model_name is {answer.get('model_name')!r}"
    specs = {spec["name"]: spec for spec in models.metadata[model]["outputs"]}
    got_names = [o.get("name") for o in answer["outputs"] if isinstance(o, dict)]
    if sorted(got_names) != sorted(expected) or len(got_names) != len(answer["outputs"]):
        return f"outputs {got_names}, expected {sorted(expected)}"
    for out in answer["outputs"]:
        name, ref = out["name"], expected[out["name"]]
        if out.get("datatype") != specs[name]["datatype"]:
            return (
                f"output {name!r}: datatype {out.get('datatype')!r}, "
                f"metadata says {specs[name]['datatype']}"
            )
        if out.get("shape") != list(ref.shape):
            return f"output {name!r}: shape {out.get('shape')}, expected {list(ref.shape)}"
        try:
            got = torch.tensor(out["data"], dtype=DTYPES[out["datatype"]]).reshape(ref.shape)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            return f"output {name!r}: data unreadable ({exc})"
        if ref.is_floating_point():
            if not torch.allclose(got, ref.to(got.dtype), rtol=RTOL, atol=ATOL, equal_nan=True):
                worst = (got.double() - ref.double()).abs().nan_to_num(0.0).max().item()
                return f"output {name!r}: differs from the reference (max abs diff {worst:.3g})"
        elif not torch.equal(got, ref.to(got.dtype)):
            return f"output {name!r}: values differ from the reference"
    return None


# -- invalid requests ---------------------------------------------------------------------------
def _nested(depth: int, inner: bytes = b"1.0") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def invalid_request(
    models: Models, rng: random.Random, gen: torch.Generator
) -> tuple[str, str, str, bytes | None]:
    """(kind, method, path, body) of one request the server must refuse with a 4xx."""
    model = rng.choice((MLP, MULTI_IO))
    path = f"/v2/models/{model}/infer"
    low, high = models.rows_range(model)
    tensors = encode_inputs(models.random_inputs(model, rng.randint(low, high), gen))
    first = tensors[0]

    def body(inputs: Any = None, **extra: Any) -> bytes:
        return json.dumps({"inputs": tensors if inputs is None else inputs, **extra}).encode()

    kind = rng.choice(
        (
            "malformed_json",
            "non_object_body",
            "wrong_datatype",
            "wrong_data_values",
            "element_count",
            "wrong_shape",
            "unknown_model",
            "unknown_input",
            "missing_input",
            "duplicate_input",
            "unknown_output",
            "deep_nesting",
            "huge_model_name",
            "bad_version",
            "empty_body",
            "wrong_method",
            "body_over_limit",
        )
    )
    if kind == "malformed_json":
        good = body()
        data = rng.choice(
            (
                good[: rng.randint(1, len(good) - 1)],
                b"{inputs: []}",
                b"\xff\xfe{}",
                b'{"inputs": [}',
                good + b"}",
                b"{'inputs': []}",
                b"NaN-ish",
            )
        )
    elif kind == "non_object_body":
        data = rng.choice(
            (
                b"[]",
                b'"inputs"',
                b"42",
                b"null",
                b"true",
                b"{}",
                b'{"inputs": 5}',
                b'{"inputs": [5]}',
                b'{"inputs": {}}',
                b'{"inputs": [[]]}',
                b'{"inputs": [{"name": 7}]}',
            )
        )
    elif kind == "wrong_datatype":
        wrong = rng.choice(
            [
                t
                for t in ("FP64", "FP16", "INT32", "INT64", "BOOL", "FLOAT", "fp32", "", "STRING")
                if t != first["datatype"]
            ]
            + [7, None]
        )
        data = body([{**first, "datatype": wrong}] + tensors[1:])
    elif kind == "wrong_data_values":
        bad = rng.choice(("x", None, {"a": 1}, [], 1e400 if first["datatype"] == "BOOL" else "1.0"))
        values = list(first["data"])
        values[rng.randrange(len(values))] = bad
        data = body([{**first, "data": values}] + tensors[1:])
    elif kind == "element_count":
        values = list(first["data"])
        values = values[:-1] if rng.random() < 0.5 else values + values[:1]
        data = body([{**first, "data": values}] + tensors[1:])
    elif kind == "wrong_shape":
        count = len(first["data"])
        shape = rng.choice(
            (
                [count],
                [count, 1],
                [*first["shape"], 1],
                [-1, *first["shape"][1:]],
                [0, *first["shape"][1:]],
                "2x16",
                [2.0, 8.0],
            )
        )
        if model == MULTI_IO and rng.random() < 0.5:  # a static batch of 5: 4 rows must fail
            rows = 4
            rowed = encode_inputs(models.random_inputs(model, 1, gen))
            for t in rowed:
                if t["shape"] and t["shape"][0] == 5:
                    t["shape"][0] = rows
                    t["data"] = t["data"][: len(t["data"]) // 5 * rows]
            data = body(rowed)
        else:
            data = body([{**first, "shape": shape}] + tensors[1:])
    elif kind == "unknown_model":
        path = f"/v2/models/no_such_model_{rng.randrange(10**6)}/infer"
        data = body()
    elif kind == "unknown_input":
        data = body([{**first, "name": rng.choice(("y", "X", "", "x ", "inputs"))}] + tensors[1:])
    elif kind == "missing_input":
        data = body(tensors[1:]) if len(tensors) > 1 else body([])
    elif kind == "duplicate_input":
        data = body(tensors + [first])
    elif kind == "unknown_output":
        data = body(outputs=[{"name": "no_such_output"}])
    elif kind == "deep_nesting":
        depth = rng.choice((350, 395, 399, 401, 1000, 5000, 100_000))
        where = rng.choice(("data", "body", "inputs", "parameters"))
        if where == "data":
            data = body([{**first, "data": "@"}] + tensors[1:]).replace(
                b'"@"', _nested(depth, json.dumps(first["data"][0]).encode())
            )
        elif where == "body":
            data = _nested(depth)
        elif where == "inputs":
            data = b'{"inputs": ' + _nested(depth, b"") + b"}"
        else:
            data = body(parameters="@").replace(b'"@"', b'{"a":' * depth + b"1" + b"}" * depth)
            data = data.replace(b'"inputs"', b'"inputs_not"')  # refused even if parsed
    elif kind == "huge_model_name":
        # Under 15 KB: see the module docstring for what happens to longer ones.
        path = f"/v2/models/{'m' * rng.randint(1024, 15 * 1024)}/infer"
        data = body()
    elif kind == "bad_version":
        path = f"/v2/models/{model}/versions/{rng.choice(('2', '0', 'latest', '1.0'))}/infer"
        data = body()
    elif kind == "empty_body":
        data = b""
    elif kind == "wrong_method":
        return kind, "GET", path, None
    else:  # body_over_limit: declared in Content-Length, sent on a raw socket (see send_raw)
        return kind, "POST", path, None
    return kind, "POST", path, data


def check_refusal(status: int | None, content: bytes | None) -> str | None:
    """What is wrong with the answer to an invalid request (None: nothing)."""
    if status is None:
        return "no answer"
    if not 400 <= status < 500:
        return f"status {status}, expected a 4xx"
    try:
        answer = json.loads(content or b"")
    except ValueError:
        return f"status {status} but the body is not JSON"
    if not (isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"]):
        return f'status {status} but the body is not {{"error": "..."}}'
    return None


# -- raw sockets --------------------------------------------------------------------------------
def _request_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def read_raw_answer(sock: socket.socket, timeout: float) -> tuple[int | None, bytes | None]:
    """Status and body of an HTTP/1.1 answer on ``sock`` (Content-Length framed)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            return None, None
        data += part
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    want = int(match.group(1)) if match else None
    while want is None or len(rest) < want:
        part = sock.recv(65536)
        if not part:
            break
        rest += part
    return status, rest


def hang_up(sock: socket.socket, reset: bool) -> None:
    if reset:  # SO_LINGER 0: close sends a TCP RST instead of a FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- the clients --------------------------------------------------------------------------------
class Soak:
    def __init__(
        self,
        base: str,
        models: Models,
        tally: Tally,
        stop: threading.Event,
        deadline: float,
        injections: list[float],
        seed: int,
    ):
        self.base = base
        self.host, self.port = base.removeprefix("http://").split(":")
        self.port = int(self.port)
        self.models = models
        self.tally = tally
        self.stop = stop
        self.deadline = deadline
        self.injections = injections  # monotonic time each crash was injected; crash #n at [n-1]
        self.seed = seed

    def client_thread(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        gen = torch.Generator().manual_seed(self.seed * 1000 + index)
        # One keep-alive connection per client, as a real client library would keep.
        timeout = httpx.Timeout(CLIENT_TIMEOUT_S, connect=5.0)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(base_url=self.base, timeout=timeout, limits=limits) as client:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                draw = rng.random()
                try:
                    if draw < 0.70:
                        self.valid(client, rng, gen)
                    elif draw < 0.90:
                        self.invalid(client, rng, gen)
                    else:
                        self.disconnect(rng, gen)
                except Exception as exc:  # noqa: BLE001 - a bug of the soak itself: say so, go on
                    self.tally.fail("soak error", error=f"{type(exc).__name__}: {exc}")

    def valid(self, client: httpx.Client, rng: random.Random, gen: torch.Generator) -> None:
        model = rng.choice((MLP, MULTI_IO))
        low, high = self.models.rows_range(model)
        inputs = self.models.random_inputs(model, rng.randint(low, high), gen)
        request_id = f"soak-{rng.getrandbits(48):x}"
        body = json.dumps({"id": request_id, "inputs": encode_inputs(inputs)}).encode()
        self.tally.add("valid sent", f"valid sent {model}")
        expected = self.models.reference(model, inputs)
        started = time.monotonic()
        try:
            r = client.post(
                f"/v2/models/{model}/infer",
                content=body,
                headers={"content-type": "application/json"},
            )
        except httpx.TransportError as exc:
            self.tally.add("lost")
            self.tally.fail(
                "lost",
                cls="valid",
                model=model,
                request=_snippet(body),
                error=f"{type(exc).__name__}: {exc}",
                expected="200 and the outputs",
            )
            return
        self.judge_valid(model, r.status_code, r.content, expected, request_id, body, started)

    def judge_valid(
        self,
        model: str,
        status: int,
        content: bytes,
        expected: dict,
        request_id: str,
        body: bytes,
        started: float,
    ) -> None:
        elapsed = time.monotonic() - started
        if status == 200:
            try:
                answer = json.loads(content)
            except ValueError:
                answer = None
            problem = check_answer(self.models, model, answer, expected, request_id)
            if problem is None:
                self.tally.add("correct", f"correct {model}")
                with self.tally.lock:
                    self.tally.latencies.append(elapsed)
            else:
                self.tally.add("wrong")
                self.tally.fail(
                    "wrong answer",
                    cls="valid",
                    model=model,
                    request=_snippet(body),
                    status=status,
                    response=_snippet(content),
                    problem=problem,
                )
            return
        problem = self.crash_problem(model, status, content, started)
        if problem is None:
            self.tally.add("crash-affected")
            return
        self.tally.add("valid non-200")
        self.tally.fail(
            "valid request refused",
            cls="valid",
            model=model,
            request=_snippet(body),
            status=status,
            response=_snippet(content),
            expected="200 and the outputs",
            problem=problem,
        )

    def crash_problem(self, model: str, status: int, content: bytes, started: float) -> str | None:
        """None if this non-200 is an injected crash's, as described in the docstring."""
        if not 500 <= status < 600:
            return f"status {status}"
        match = CRASH_TEXT.search(content.decode("utf-8", "replace"))
        if match is None:
            return f"status {status}, not an injected crash"
        number = int(match.group(1))
        if not 1 <= number <= len(self.injections):
            return f"names crash #{number}, but {len(self.injections)} were injected"
        if CRASH_ORDER[(number - 1) % len(CRASH_ORDER)] != model:
            return f"crash #{number} was injected into another model"
        with self.tally.lock:
            self.tally.crash_hits[number] += 1
            hits = self.tally.crash_hits[number]
        if hits > HELD_AT_MOST[model]:
            return f"crash #{number} failed {hits} requests, more than one run of {model} holds"
        return None

    def invalid(self, client: httpx.Client, rng: random.Random, gen: torch.Generator) -> None:
        kind, method, path, body = invalid_request(self.models, rng, gen)
        self.tally.add("invalid sent")
        with self.tally.lock:
            self.tally.invalid_kinds[kind] += 1
        status = content = None
        error = None
        try:
            if kind == "body_over_limit":
                status, content = self.over_limit(path)
            else:
                headers = {"content-type": "application/json"} if body is not None else {}
                r = client.request(method, path, content=body, headers=headers)
                status, content = r.status_code, r.content
        except (httpx.TransportError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        problem = check_refusal(status, content)
        if problem is None:
            self.tally.add("refused 4xx")
            with self.tally.lock:
                self.tally.invalid_kinds_ok[kind] += 1
            return
        self.tally.add("lost" if status is None else "invalid mis-answered")
        self.tally.fail(
            "lost" if status is None else "invalid request not refused properly",
            cls="invalid",
            kind=kind,
            method=method,
            path=_snippet(path, 120),
            request=_snippet(body),
            status=status,
            response=_snippet(content),
            error=error,
            expected='a 4xx with {"error": ...}',
            problem=problem,
        )

    def over_limit(self, path: str) -> tuple[int | None, bytes | None]:
        """A Content-Length over the server's limit, body never sent: must be refused (413)
        from the header alone."""
        with socket.create_connection((self.host, self.port), timeout=5.0) as sock:
            sock.sendall(_request_head(path, MAX_BODY_BYTES + 1 + random.randrange(10**6)))
            return read_raw_answer(sock, CLIENT_TIMEOUT_S)

    def disconnect(self, rng: random.Random, gen: torch.Generator) -> None:
        rows = rng.randint(256, 1024)
        inputs = self.models.random_inputs(MLP, rows, gen)
        request_id = f"soak-gone-{rng.getrandbits(48):x}"
        body = json.dumps({"id": request_id, "inputs": encode_inputs(inputs)}).encode()
        path = f"/v2/models/{MLP}/infer"
        kind = rng.choice(("close_after_send", "close_mid_body", "client_timeout"))
        self.tally.add("disconnect sent")
        with self.tally.lock:
            self.tally.disconnect_kinds[kind] += 1
        try:
            if kind == "client_timeout":
                self.timeout_client(path, body, inputs, request_id, rng)
                return
            with socket.create_connection((self.host, self.port), timeout=10.0) as sock:
                sent = len(body) if kind == "close_after_send" else rng.randint(1, len(body) - 1)
                sock.sendall(_request_head(path, len(body)) + body[:sent])
                time.sleep(rng.uniform(0.0, 0.005))
                hang_up(sock, reset=rng.random() < 0.5)
        except (OSError, httpx.TransportError) as exc:
            # Could not even hand the request over: the server is not taking connections.
            self.tally.add("lost")
            self.tally.fail(
                "lost",
                cls="disconnect",
                kind=kind,
                request=_snippet(body),
                error=f"{type(exc).__name__}: {exc}",
                expected="the server to take the request before we hang up",
            )

    def timeout_client(
        self, path: str, body: bytes, inputs: dict, request_id: str, rng: random.Random
    ) -> None:
        timeout = httpx.Timeout(10.0, read=rng.uniform(0.001, 0.03))
        started = time.monotonic()
        with httpx.Client(base_url=self.base, timeout=timeout) as client:
            try:
                r = client.post(path, content=body, headers={"content-type": "application/json"})
            except httpx.ReadTimeout:
                return  # hung up on purpose, by timing out
        # Answered before the timeout: it must be right like any valid request.
        self.tally.add("disconnect answered anyway")
        expected = self.models.reference(MLP, inputs)
        self.judge_valid(MLP, r.status_code, r.content, expected, request_id, body, started)


# -- samplers -----------------------------------------------------------------------------------
def sample_rss(
    proc: subprocess.Popen,
    t0: float,
    every: float,
    stop: threading.Event,
    samples: list[tuple[float, int]],
    died: threading.Event,
) -> None:
    while not stop.wait(every):
        rss = rss_bytes(proc.pid)
        if rss is None or proc.poll() is not None:
            died.set()
            stop.set()
            return
        samples.append((time.monotonic() - t0, rss))


# The health probe runs in a process of its own: in this one, 16 client threads queue for the
# GIL, and a probe thread waiting its turn would time our own queue, not the server.
_PROBE = """
import http.client, sys, time
host, port, every, until = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
conn, end = None, time.monotonic() + until
while time.monotonic() < end:
    time.sleep(every)
    started = time.monotonic()
    try:
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/v2/health/live")
        answer = conn.getresponse()
        body = answer.read()
        status = answer.status if body == b'{"live":true}' else f"{answer.status}:{body[:80]!r}"
    except Exception as exc:
        status, conn = type(exc).__name__, None
    print(f"{time.monotonic() - started:.6f} {status}", flush=True)
"""


def start_probe(host: str, port: int, every: float, seconds: float) -> subprocess.Popen:
    cmd = [sys.executable, "-c", _PROBE, host, str(port), str(every), str(seconds)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def read_probe(probe: subprocess.Popen, tally: Tally, latencies: list[float]) -> None:
    """Collect the probe's lines until it ends: ``seconds status`` per health check."""
    for line in probe.stdout:
        took, _, status = line.strip().partition(" ")
        latencies.append(float(took))
        if status != "200" or float(took) > HEALTH_LIMIT_S:
            tally.add("health failures")
            tally.fail(
                "health check",
                status=status,
                seconds=round(float(took), 3),
                expected=f'200 {{"live":true}} within {HEALTH_LIMIT_S:g} s',
            )


def rss_verdict(samples: list[tuple[float, int]], duration: float) -> dict[str, Any]:
    """The flat-RSS check described in the module docstring."""
    warmup = min(60.0, 0.2 * duration)
    out: dict[str, Any] = {"warmup_s": warmup}
    if len(samples) < 3:
        out.update(flat=False, why="too few RSS samples")
        return out
    end_t = samples[-1][0]
    mid_t = warmup + (end_t - warmup) / 2

    def near(t: float) -> int:
        closest = sorted(samples, key=lambda s: abs(s[0] - t))[:3]
        return int(statistics.median(rss for _, rss in closest))

    rss_mid, rss_end = near(mid_t), int(statistics.median(rss for _, rss in samples[-3:]))
    limit = max(0.05 * rss_mid, 20 * MiB)
    out.update(
        start=samples[0][1],
        after_warmup=near(warmup),
        second_half_start=rss_mid,
        max=max(rss for _, rss in samples),
        end=rss_end,
        growth=rss_end - rss_mid,
        limit=int(limit),
        flat=rss_end - rss_mid < limit,
    )
    return out


def read_restarts(base: str) -> tuple[int | None, int | None]:
    """Worker restarts, summed over the models: (from /v2/status, from /metrics)."""
    from_status = from_metrics = None
    with contextlib.suppress(httpx.TransportError, ValueError, KeyError, TypeError):
        status = httpx.get(f"{base}/v2/status", timeout=5.0).json()
        from_status = sum(int(m["info"]["restarts"]) for m in status["models"])
    with contextlib.suppress(httpx.TransportError, ValueError):
        text = httpx.get(f"{base}/metrics", timeout=5.0).text
        found = re.findall(r"(?m)^pt2interp_worker_restarts_total\{[^}]*\}\s+(\S+)$", text)
        if found:
            from_metrics = int(sum(float(v) for v in found))
    return from_status, from_metrics


# -- the run ------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    duration = args.seconds if args.seconds is not None else args.minutes * 60.0
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tally, stop, died = Tally(), threading.Event(), threading.Event()
    rss: list[tuple[float, int]] = []
    health: list[float] = []
    injections: list[float] = []
    result: dict[str, Any] = {
        "duration_s": duration,
        "clients": args.clients,
        "crash_every_s": args.crash_every,
    }
    with tempfile.TemporaryDirectory(prefix="pt2interp-soak-") as tmp:
        log_path = Path(tmp) / "server.log"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.soak_server",
            "--port",
            str(port),
            "--threads",
            str(args.threads),
            "--max-seconds",
            str(duration + 300),
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        threads: list[threading.Thread] = []
        probe = None
        try:
            wait_ready(proc, base)
            metadata = {m: httpx.get(f"{base}/v2/models/{m}", timeout=5.0).json() for m in PATHS}
            models = Models(metadata)
            for model in PATHS:  # load once here: a broken archive fails before the run
                models.program(model)
            t0 = time.monotonic()
            rss.append((0.0, rss_bytes(proc.pid) or 0))
            soak = Soak(base, models, tally, stop, t0 + duration, injections, args.seed)
            every = args.sample_every
            # Daemons: should this thread die (Ctrl-C), they must not keep the process alive.
            threads = [
                threading.Thread(
                    target=soak.client_thread, args=(i,), daemon=True, name=f"soak-client-{i}"
                )
                for i in range(args.clients)
            ]
            probe = start_probe("127.0.0.1", port, every, duration + 5.0)
            samplers = [
                threading.Thread(
                    target=sample_rss, args=(proc, t0, every, stop, rss, died), daemon=True
                ),
                threading.Thread(target=read_probe, args=(probe, tally, health), daemon=True),
            ]
            for thread in threads + samplers:
                thread.start()
            # Crashes while traffic runs, none in the last 5 s so that each restart shows.
            next_crash = args.crash_every if args.crash_every > 0 else float("inf")
            while not stop.is_set() and (now := time.monotonic() - t0) < duration:
                if now >= next_crash and now <= duration - 5.0:
                    injections.append(time.monotonic())  # first: the 500s name it at once
                    os.kill(proc.pid, signal.SIGUSR1)
                    next_crash += args.crash_every
                stop.wait(min(0.2, max(0.0, duration - now)))
            # The clients stop at the deadline by themselves; each request is bounded in time.
            for thread in threads:
                thread.join(max(1.0, t0 + duration + 2 * CLIENT_TIMEOUT_S + 15 - time.monotonic()))
            result["stuck_clients"] = sum(t.is_alive() for t in threads)
            result["elapsed_s"] = time.monotonic() - t0
            if (last := rss_bytes(proc.pid)) is not None:
                rss.append((time.monotonic() - t0, last))
            stop.set()
            probe.terminate()
            for thread in samplers:
                thread.join(15.0)
            result["server_died"] = died.is_set() or proc.poll() is not None
            # A restart is counted once the new worker has reloaded; give the last one time.
            seen = (None, None)
            wait_until = time.monotonic() + 15.0
            while not result["server_died"] and time.monotonic() < wait_until:
                seen = read_restarts(base)
                if seen == (len(injections), len(injections)):
                    break
                time.sleep(0.5)
            result["restarts_status"], result["restarts_metrics"] = seen
            with contextlib.suppress(httpx.TransportError, ValueError):
                status = httpx.get(f"{base}/v2/status", timeout=5.0).json()
                keys = (
                    "inference_count",
                    "error_count",
                    "request_count",
                    "batch_count",
                    "mean_batch_size",
                    "restarts",
                    "reloads",
                    "queue_depth",
                )
                result["server_info"] = {
                    m["name"]: {k: m["info"].get(k) for k in keys} for m in status["models"]
                }
        except BaseException:
            # No figures to show (the server did not start, say): show what the server said.
            sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
            raise
        finally:
            stop.set()
            if probe is not None:
                probe.kill()
                probe.wait(10)
            result["stop"] = stop_server(proc)
            for thread in threads:
                thread.join(5.0)
            server_log = log_path.read_text(errors="replace")
    result["injected"] = len(injections)
    result["rss_samples"] = [(round(t, 2), b) for t, b in rss]
    result["rss"] = rss_verdict(rss, duration)
    result["health_max_s"] = max(health, default=None)
    result["health_checks"] = len(health)
    result["counts"] = dict(tally.counts)
    result["invalid_kinds"] = {
        k: [tally.invalid_kinds[k], tally.invalid_kinds_ok[k]] for k in sorted(tally.invalid_kinds)
    }
    result["disconnect_kinds"] = dict(tally.disconnect_kinds)
    result["crash_hits"] = {str(k): v for k, v in sorted(tally.crash_hits.items())}
    result["failure_kinds"] = dict(tally.failure_kinds)
    result["failures"] = tally.failures
    lat = sorted(tally.latencies)
    result["valid_latency_ms"] = (
        {
            "p50": 1000 * lat[len(lat) // 2],
            "p99": 1000 * lat[int(len(lat) * 0.99)],
            "max": 1000 * lat[-1],
        }
        if lat
        else None
    )
    # The last line of each traceback the server logged names its exception.
    raised = re.findall(r"(?m)^(\w+(?:\.\w+)*(?:Error|Exception|Disconnect)\w*)(?::|$)", server_log)
    result["server_log_exceptions"] = dict(Counter(raised))
    result["server_log_tracebacks"] = server_log.count("Traceback (most recent call last)")
    result["server_log_tail"] = server_log.splitlines()[-30:]
    first = server_log.find("Traceback (most recent call last)")
    result["server_log_first_traceback"] = (
        server_log[first:].splitlines()[:60] if first >= 0 else None
    )
    result["verdict"], result["reasons"] = verdict(result)
    return result


def verdict(result: dict[str, Any]) -> tuple[str, list[str]]:
    counts = result["counts"]
    reasons = []
    for key, label in (
        ("wrong", "wrong answers"),
        ("valid non-200", "valid requests refused"),
        ("lost", "requests lost"),
        ("invalid mis-answered", "invalid requests not refused with a 4xx JSON error"),
        ("health failures", "health checks failed or slower than 1 s"),
    ):
        if counts.get(key):
            reasons.append(f"{counts[key]} {label}")
    if result["failure_kinds"].get("soak error"):
        reasons.append(f"{result['failure_kinds']['soak error']} errors in the soak itself")
    for model in PATHS:
        if not counts.get(f"correct {model}"):
            reasons.append(f"no correct answer from {model}")
    if result.get("server_died"):
        reasons.append("the server process died during the run")
    if result.get("stuck_clients"):
        reasons.append(f"{result['stuck_clients']} client threads did not finish")
    injected = result["injected"]
    if result.get("restarts_status") != injected or result.get("restarts_metrics") != injected:
        reasons.append(
            f"{injected} crashes injected, restarts seen: "
            f"{result.get('restarts_status')} in /v2/status, "
            f"{result.get('restarts_metrics')} in /metrics"
        )
    if not result["rss"].get("flat"):
        rss = result["rss"]
        reasons.append(
            rss.get("why")
            or (
                f"RSS grew {rss['growth'] / MiB:.1f} MiB over the second "
                f"half (limit {rss['limit'] / MiB:.1f} MiB)"
            )
        )
    stop = result["stop"]
    if stop["already_gone"] or stop["killed"] or stop["returncode"] != 0:
        reasons.append(
            f"the server did not exit cleanly on SIGTERM (status {stop['returncode']}, "
            f"killed: {stop['killed']})"
        )
    if result["server_log_tracebacks"]:
        # No client sees them, but each is an exception the server did not handle, and a log
        # that grows with every client that hangs up is one an operator stops reading.
        reasons.append(f"the server logged {result['server_log_tracebacks']} tracebacks")
    return ("FAIL" if reasons else "PASS"), reasons


# -- the report ---------------------------------------------------------------------------------
def report(result: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # A fixed width: the same table on a terminal, in a pipe and in a test's captured output.
    console = Console(width=110, highlight=False)
    for failure in result["failures"][:PRINTED_EXAMPLES]:
        console.print(
            f"[bold red]failure[/] {escape(json.dumps(failure, ensure_ascii=False))}",
            soft_wrap=True,
        )
    n = result["counts"].get
    rss = result["rss"]
    stop = result["stop"]

    def mib(key: str) -> str:
        return f"{rss[key] / MiB:.1f} MiB" if key in rss else "n/a"

    latency = result["valid_latency_ms"]
    if "growth" in rss:
        growth = (
            f"{rss['growth'] / MiB:+.1f} MiB (limit {rss['limit'] / MiB:.1f}): "
            f"{'flat' if rss['flat'] else 'GROWING'}"
        )
    else:
        growth = rss.get("why", "n/a")
    rows = [
        (
            "duration",
            (
                f"{result.get('elapsed_s', 0):.1f} s of {result['duration_s']:g} s, "
                f"{result['clients']} clients"
            ),
        ),
        (
            "requests sent: valid",
            (
                f"{n('valid sent', 0)} ({n(f'valid sent {MLP}', 0)} {MLP}, "
                f"{n(f'valid sent {MULTI_IO}', 0)} {MULTI_IO})"
            ),
        ),
        ("requests sent: invalid", str(n("invalid sent", 0))),
        (
            "requests sent: disconnecting",
            (
                f"{n('disconnect sent', 0)} "
                f"({n('disconnect answered anyway', 0)} answered "
                f"before hanging up)"
            ),
        ),
        ("answered 200 and correct", str(n("correct", 0))),
        ("wrong answers", str(n("wrong", 0))),
        ("valid refused (non-200, not a crash)", str(n("valid non-200", 0))),
        ("lost", str(n("lost", 0))),
        ("invalid answered 4xx + JSON error", f"{n('refused 4xx', 0)} of {n('invalid sent', 0)}"),
        ("crash-affected (5xx naming an injected crash)", str(n("crash-affected", 0))),
        (
            "worker restarts: injected / /v2/status / /metrics",
            (
                f"{result['injected']} / {result.get('restarts_status')} / "
                f"{result.get('restarts_metrics')}"
            ),
        ),
        (
            "valid latency p50 / p99 / max",
            " / ".join(f"{v:.1f}" for v in latency.values()) + " ms" if latency else "n/a",
        ),
        (
            "health/live: checks, max latency",
            f"{result['health_checks']}, {1000 * (result['health_max_s'] or 0):.1f} ms",
        ),
        (
            "server RSS: start / after warm-up / max / end",
            f"{mib('start')} / {mib('after_warmup')} / {mib('max')} / {mib('end')}",
        ),
        ("RSS growth over the second half", growth),
        (
            "server exit after SIGTERM",
            f"{stop['exit_s']:.2f} s, status {stop['returncode']}"
            if stop["exit_s"] is not None
            else f"gone before, status {stop['returncode']}",
        ),
        (
            "tracebacks in the server log",
            f"{result['server_log_tracebacks']}: "
            + (
                ", ".join(f"{k} x{v}" for k, v in result["server_log_exceptions"].items()) or "none"
            ),
        ),
    ]
    table = Table(title="pt2interp serve soak", box=box.SIMPLE_HEAVY)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if result["server_log_tracebacks"]:
        console.print(
            f"[yellow]note[/]: the server logged {result['server_log_tracebacks']} "
            "tracebacks of exceptions it did not handle (--json keeps the first)"
        )
    if result["verdict"] == "PASS":
        console.print(
            "[bold green]PASS[/]: every valid answer right, every invalid request "
            "refused, nothing lost, restarts as injected, RSS flat, health fast, "
            "clean exit",
            soft_wrap=True,
        )
    else:
        console.print(f"[bold red]FAIL[/]: {escape('; '.join(result['reasons']))}", soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    length.add_argument("--seconds", type=float, help="how long, for short runs")
    parser.add_argument(
        "--crash-every",
        type=float,
        default=60.0,
        help="seconds between injected worker crashes (default 60; 0: none)",
    )
    parser.add_argument(
        "--clients", type=int, default=16, help="concurrent client threads (default 16)"
    )
    parser.add_argument(
        "--sample-every",
        type=float,
        default=2.0,
        help="seconds between RSS and health samples (default 2)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="the server's torch threads (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    # This process computes the references; one thread leaves the other CPU to the server.
    torch.set_num_threads(1)
    try:
        result = run(args)
    except RuntimeError as exc:  # the server did not come up
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
