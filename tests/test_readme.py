"""Every command and Python example in README.md runs as written, so the README cannot go stale.

The README is cut into steps in the order it shows them: each command line of a ``bash`` block
and each ``python`` block. Steps run in a scratch folder holding a link to every top-level entry
of the repository, so that the README's repository-relative paths work and the files it writes
(``out.safetensors``, ``net.py``, ...) land in the scratch folder. ``python`` and ``pt2interp``
mean this interpreter and ``python -m pt2interp.cli`` run by it, whatever else is on PATH.

- A command line runs in ``bash`` and must exit with status 0.
- Python blocks run in one interpreter session, in order, as if pasted one after the other,
  each block from a file of its own (so tracebacks and torch.export's stack traces have its
  source lines). A line ``EXPRESSION  # LITERAL`` states a value, and the expression must
  equal the literal (``schema.inputs[0].tensor.shape_str  # '[s77∈1..1024, 16]'``).
- A Python block whose first line is ``# NAME.py`` is a file the reader is told to save: it is
  written as NAME.py, for a later command (``python export_net.py``) to run.
- A Python block holding ``def NAME(...): ...`` stubs is a listing of what the command before
  it wrote (``pt2interp codegen ... -o net.py``): its lines, apart from the stubs, must appear
  in that file in order, and every stubbed function must be defined there.
- Before a step runs, every earlier step the test runs is run once (whichever test asks
  first), so any single test can be run alone.

What is not run is listed in SKIPPED with the reason. ``pt2interp serve`` and the ``curl``
lines run in ``test_serving_*``: the README's server on a free port, and the README's request
bodies sent to it as written. Lines that need a GPU run only where CUDA is available.

The README's Python examples are run here; the examples in module docstrings are run by
``tests/test_doctests.py``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
STEP_TIMEOUT_S = 120

# (pattern matched against a command line, why the test does not run it)
SKIPPED = [
    (
        r"^(python -m )?pip install ",
        "installs packages from the network; the test runs where the project is installed",
    ),
    (r"^bash \.ci/run\b", "installs packages and runs the whole test suite, this test included"),
    (
        r"^tools/compat\.sh ",
        "builds a venv and downloads another torch release (a CUDA build of about 4 GB)",
    ),
    (
        r"^pt2interp serve .*--ray\b",
        "starts a Ray cluster of its own; tests/test_ray_serve.py runs `serve --ray`",
    ),
    (
        r"^(docker|kubectl) ",
        "needs Docker and a Kubernetes cluster; tests/test_kserve_runtime.py runs the runtime's "
        "command as KServe starts it, without them",
    ),
]
# run by test_serving_* instead: the server runs until it is stopped
SERVING = (r"^pt2interp serve ", r"^curl ")
NEEDS_CUDA = r"--device cuda\b"


@dataclass(frozen=True)
class Step:
    index: int
    kind: str  # "shell", "python", "file" (saved for a later command), "listing", "client"
    text: str
    line: int  # README line of the command, or of the block's first line
    name: str = ""  # the file a "file" block is saved as

    @property
    def id(self) -> str:
        first = self.text.strip().splitlines()[0]
        return f"L{self.line}-" + re.sub(r"[^\w.=-]+", "_", first)[:60].strip("_")


def readme_steps(text: str) -> list[Step]:
    steps: list[Step] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\w*)\s*", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        lang, body, first = fence[1], lines[i + 1 : end], i + 2
        if lang in ("bash", "sh", "shell", "console"):
            command, start = "", None
            for n, line in enumerate(body, first):
                if not command and (not line.strip() or line.lstrip().startswith("#")):
                    continue
                start = start or n
                if line.endswith("\\"):
                    command += line[:-1] + " "
                    continue
                steps.append(Step(len(steps), "shell", command + line, start))
                command, start = "", None
        elif lang == "python":
            source = "\n".join(body) + "\n"
            saved = re.fullmatch(r"#\s*(\w+\.py)\s*", body[0]) if body else None
            if saved:
                steps.append(Step(len(steps), "file", source, first, saved[1]))
            elif re.search(r"^def \w+\(.*\):\s*\.\.\.", source, re.MULTILINE):
                steps.append(Step(len(steps), "listing", source, first))
            elif f"localhost:{README_PORT}" in source or f"localhost:{README_GRPC_PORT}" in source:
                steps.append(Step(len(steps), "client", source, first))
            else:
                steps.append(Step(len(steps), "python", source, first))
        i = end + 1
    return steps


README_PORT = "8080"
README_GRPC_PORT = "8081"
STEPS = readme_steps(README.read_text(encoding="utf-8"))


def skip_reason(step: Step) -> str | None:
    if step.kind != "shell":
        return None
    for pattern, reason in SKIPPED:
        if re.search(pattern, step.text):
            return reason
    if any(re.search(p, step.text) for p in SERVING):
        return "a long-running server and its clients: run by test_serving_*"
    return None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def runs_here(step: Step) -> bool:
    if skip_reason(step) or step.kind in ("listing", "client"):  # clients: test_serving_*
        return False
    return not re.search(NEEDS_CUDA, step.text) or cuda_available()


def marks(step: Step) -> list:
    reason = skip_reason(step)
    if reason:
        return [pytest.mark.skip(reason=reason)]
    out = []
    if re.search(NEEDS_CUDA, step.text):
        out.append(pytest.mark.cuda)  # conftest skips these where CUDA is not available
    return out


# One interpreter session for the README's Python blocks: each line of stdin is a block
# ([file name, source]), run in the namespace of the blocks before it; each answer is a line
# [status, what the block printed], after the values the block states in comments are checked.
PYTHON_SESSION = r"""
import ast, contextlib, io, json, re, sys, traceback
from pathlib import Path

def check_stated_values(name, source, ns):
    for n, line in enumerate(source.splitlines(), 1):
        m = re.fullmatch(r"(\S.*?)\s+#\s*('.*'|\".*\"|-?[0-9][0-9_.]*)\s*", line)
        if not m:
            continue
        try:
            ast.parse(m[1], mode="eval")
        except SyntaxError:
            continue
        got, want = eval(m[1], ns), ast.literal_eval(m[2])
        if got != want:
            raise AssertionError(f"{name}:{n}: {m[1]} is {got!r}; the README says {want!r}")

ns = {"__name__": "__main__"}
answers = sys.stdout
for request in sys.stdin:
    name, source = json.loads(request)
    printed, status = io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            Path(name).write_text(source, encoding="utf-8")
            exec(compile(source, name, "exec"), ns)
            check_stated_values(name, source, ns)
    except BaseException:
        printed.write(traceback.format_exc())
        status = 1
    answers.write(json.dumps([status, printed.getvalue()]) + "\n")
    answers.flush()
"""


class Session:
    """The scratch folder and what each step gave, run once each, in README order."""

    def __init__(self, base: Path):
        self.folder = base / "repo"
        self.folder.mkdir()
        for entry in ROOT.iterdir():
            if entry.name not in {".git", ".venv", ".pytest_cache", ".ruff_cache", ".hypothesis"}:
                (self.folder / entry.name).symlink_to(entry)
        bin_dir = base / "bin"
        bin_dir.mkdir()
        python = shlex.quote(sys.executable)
        for name, command in [
            ("python", python),
            ("python3", python),
            ("pt2interp", f"{python} -m pt2interp.cli"),
        ]:
            shim = bin_dir / name
            shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
            shim.chmod(0o755)
        self.env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        self.results: dict[int, subprocess.CompletedProcess] = {}
        self.by_command: dict[str, subprocess.CompletedProcess] = {}
        self.python: subprocess.Popen | None = None

    def close(self) -> None:
        if self.python is not None:
            self.python.stdin.close()
            try:
                self.python.wait(10)
            except subprocess.TimeoutExpired:
                self.python.kill()
                self.python.wait(5)

    def result(self, step: Step) -> subprocess.CompletedProcess:
        for earlier in STEPS[: step.index]:
            if runs_here(earlier) and earlier.index not in self.results:
                self.results[earlier.index] = self._run(earlier)
        if step.index not in self.results:
            self.results[step.index] = self._run(step)
        return self.results[step.index]

    def shell(self, command: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", command],
            check=False,
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
            **kw,
        )

    def _run(self, step: Step) -> subprocess.CompletedProcess:
        if step.kind == "shell":
            # a command shown twice (`pt2interp demo`) runs once
            key = shlex.join(shlex.split(step.text, comments=True))
            if key not in self.by_command:
                self.by_command[key] = self.shell(step.text)
            return self.by_command[key]
        if step.kind == "file":
            (self.folder / step.name).write_text(step.text, encoding="utf-8")
            return subprocess.CompletedProcess(step.name, 0, "", "")
        if step.kind == "listing":
            return subprocess.CompletedProcess("listing", 0, "", "")
        return self._python_block(step)

    def _python_block(self, step: Step) -> subprocess.CompletedProcess:
        """Run a Python block in the session every earlier block ran in (started on first use)."""
        if self.python is None:
            with open(self.folder / "python-session.log", "wb") as log:
                self.python = subprocess.Popen(
                    [sys.executable, "-c", PYTHON_SESSION],
                    cwd=self.folder,
                    env=self.env,
                    text=True,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
        self.python.stdin.write(json.dumps([f"readme_line{step.line}.py", step.text]) + "\n")
        self.python.stdin.flush()
        ready, _, _ = select.select([self.python.stdout], [], [], STEP_TIMEOUT_S)
        answer = self.python.stdout.readline() if ready else ""
        if not answer:
            self.python.kill()
            self.python.wait(5)
            self.python = None  # later blocks start a new session
            log = (self.folder / "python-session.log").read_text()
            raise AssertionError(
                f"README line {step.line}: the Python session "
                f"{'timed out' if not ready else 'died'}\n{log[-3000:]}"
            )
        status, printed = json.loads(answer)
        return subprocess.CompletedProcess(step.name, status, printed, "")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    if shutil.which("bash") is None:
        pytest.skip("the README's commands are bash")
    made = Session(tmp_path_factory.mktemp("readme"))
    yield made
    made.close()


def _explain(step: Step, done: subprocess.CompletedProcess) -> str:
    tail = (done.stdout[-3000:] + "\n" + done.stderr[-3000:]).strip()
    return f"README line {step.line} exited with {done.returncode}:\n{step.text}\n---\n{tail}"


RUN = [s for s in STEPS if s.kind in ("shell", "python")]


@pytest.mark.parametrize("step", [pytest.param(s, marks=marks(s), id=s.id) for s in RUN])
def test_readme_step(session, step):
    done = session.result(step)
    assert done.returncode == 0, _explain(step, done)


LISTINGS = [s for s in STEPS if s.kind == "listing"]


@pytest.mark.parametrize("step", [pytest.param(s, id=s.id) for s in LISTINGS])
def test_readme_listing_is_what_the_command_writes(session, step):
    session.result(step)
    command = next(s for s in reversed(STEPS[: step.index]) if s.kind == "shell")
    written = re.search(r"(?:-o|--output)\s+(\S+)", command.text)
    assert written, f"README line {step.line}: the command before the listing names no output"
    generated = (session.folder / written[1]).read_text(encoding="utf-8")
    stub = re.compile(r"def (\w+)\(.*\):\s*\.\.\.")
    runs, run = [], []
    for line in step.text.splitlines():
        if stub.match(line):
            assert re.search(rf"^def {stub.match(line)[1]}\(", generated, re.MULTILINE), line
            runs.append(run)
            run = []
        else:
            run.append(line)
    runs.append(run)
    at = 0
    for run in runs:
        text = "\n".join(run).strip("\n")
        if text:
            found = generated.find(text, at)
            if found < 0:
                diff = difflib.unified_diff(
                    text.splitlines(), generated.splitlines(), "README", written[1], lineterm=""
                )
                pytest.fail(
                    f"README line {step.line}: {written[1]} differs from the listing:\n"
                    + "\n".join(diff)
                )
            at = found + len(text)


# -- the server and its clients ------------------------------------------------------------------
def _skipped_outright(step: Step) -> bool:
    return any(re.search(pattern, step.text) for pattern, _ in SKIPPED)


SERVE = [
    s
    for s in STEPS
    if s.kind == "shell" and re.search(SERVING[0], s.text) and not _skipped_outright(s)
]
CURLS = [s for s in STEPS if s.kind == "shell" and re.search(SERVING[1], s.text)]
CLIENTS = [s for s in STEPS if s.kind == "client"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the gRPC port the served README command listens on, chosen when it starts
_GRPC_PORT: list[int] = []


def _on_port(text: str, port: int) -> str:
    text = text.replace(f"--port {README_PORT}", f"--port {port}").replace(
        f"localhost:{README_PORT}", f"localhost:{port}"
    )
    if _GRPC_PORT:
        grpc_port = _GRPC_PORT[-1]
        text = text.replace(f"--grpc-port {README_GRPC_PORT}", f"--grpc-port {grpc_port}")
        text = text.replace(f"localhost:{README_GRPC_PORT}", f"localhost:{grpc_port}")
    return text


@pytest.fixture(scope="module")
def served(session):
    """The README's `pt2interp serve` line, on a free port instead of 8080; yields the port."""
    for module in ("fastapi", "uvicorn", "prometheus_client", "grpc"):
        pytest.importorskip(module, reason="the serve extra is not installed")
    assert len(SERVE) == 1, "the README shows one `pt2interp serve` command"
    port = _free_port()
    _GRPC_PORT.append(_free_port())
    command = _on_port(SERVE[0].text, port)
    assert f"--port {port}" in command, "the README's serve command names --port 8080"
    log = session.folder / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=session.folder,
            env=session.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"the server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the server did not start:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        yield port
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def _curl_request(line: str, port: int) -> urllib.request.Request:
    """The request a README `curl` line makes, read with shlex as the shell would."""
    args = shlex.split(_on_port(line, port), comments=True)
    assert args[0] == "curl"
    method, url, data, headers = None, None, None, {}
    rest = iter(args[1:])
    for arg in rest:
        if arg in ("-X", "--request"):
            method = next(rest)
        elif arg in ("-H", "--header"):
            key, _, value = next(rest).partition(":")
            headers[key.strip()] = value.strip()
        elif arg in ("-d", "--data", "--data-raw", "--data-binary"):
            data = next(rest).encode()
        elif arg.startswith("-"):
            raise AssertionError(f"a curl option this test does not read: {arg}")
        else:
            url = arg if "://" in arg else f"http://{arg}"
    return urllib.request.Request(
        url, data=data, headers=headers, method=method or ("POST" if data else "GET")
    )


@pytest.mark.parametrize("step", [pytest.param(s, id=s.id) for s in CURLS])
def test_serving_curl_request_gets_200(served, step):
    request = _curl_request(step.text, served)
    if request.data is not None:
        try:
            json.loads(request.data)
        except ValueError as exc:
            pytest.fail(f"README line {step.line}: the request body is not valid JSON: {exc}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, body = answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        pytest.fail(f"README line {step.line}: {exc.code} {exc.read().decode(errors='replace')}")
    assert status == 200
    if request.full_url.endswith("/infer"):
        assert body["outputs"], body


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("step", [pytest.param(s, id=s.id) for s in CURLS])
def test_serving_curl_line_as_pasted(session, served, step):
    done = session.shell(_on_port(step.text, served))
    assert done.returncode == 0, _explain(step, done)
    answer = json.loads(done.stdout)
    assert "error" not in answer, answer


@pytest.mark.parametrize("step", [pytest.param(s, id=s.id) for s in CLIENTS])
def test_serving_python_client_runs(session, served, step):
    """A Python block that talks to the README's server runs, as its own script, against it."""
    script = session.folder / f"client_{step.index}.py"
    script.write_text(_on_port(step.text, served), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        cwd=session.folder,
        env=session.env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )
    assert done.returncode == 0, f"README line {step.line}:\n{done.stdout}\n{done.stderr}"


def test_served_outputs_are_named_as_the_readme_says(served):
    infer = _curl_request(next(s.text for s in CURLS if "/infer" in s.text), served)
    with urllib.request.urlopen(infer, timeout=30) as answer:
        outputs = json.loads(answer.read())["outputs"]
    assert [(o["name"], o["datatype"], o["shape"]) for o in outputs] == [("out", "FP32", [1, 8])]


def test_info_prints_the_names_the_readme_uses(session):
    done = session.shell("pt2interp info fixtures/zoo/multi_io.pt2")
    assert done.returncode == 0, done.stderr
    for name in ("a", "b", "mask", "scale", "out.sum", "out.pair.0", "out.pair.1", "out.cat"):
        assert re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", done.stdout), name


def test_readme_steps_are_all_accounted_for():
    """Each step is run, skipped for a reason written above, or run by the serving tests; a
    README without the steps the tests above look for has been cut by mistake."""
    assert len(SERVE) == 1 and any("/infer" in s.text for s in CURLS)
    assert LISTINGS and any(s.kind == "file" for s in STEPS)
    shell = [s for s in STEPS if s.kind == "shell"]
    assert any(s.text.startswith("pt2interp demo") for s in shell)
    for step in STEPS:
        assert step.kind in ("shell", "python", "file", "listing", "client"), step
