"""pt2interp.serve.ray on a local Ray cluster this module starts (2 CPUs, no dashboard): the
replicas answer over Ray's HTTP proxy as ``pt2interp.load`` does, requests reach every replica,
and a replica killed under load loses no acknowledged request and is replaced."""

from __future__ import annotations

import importlib
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import pt2interp

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "fixtures/zoo/mlp.pt2"  # a static batch of 4 rows
DYN_MLP = ROOT / "fixtures/zoo/dynamic_batch_mlp.pt2"
APP = "pt2interp-test"

try:
    import httpx
    import ray
    from ray import serve
except ImportError as exc:  # pragma: no cover - depends on the extras installed
    httpx = ray = serve = None
    MISSING = f"needs Ray Serve and httpx (pip install 'pt2interp[ray,serve]'): {exc}"
except Exception as exc:  # pragma: no cover - installed, but its dependencies do not fit
    httpx = ray = serve = None
    MISSING = f"Ray Serve is installed but cannot be imported here: {type(exc).__name__}: {exc}"
else:
    MISSING = None

needs_ray = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _body(x: torch.Tensor) -> dict:
    return {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}
        ]
    }


def _output(answer: dict) -> torch.Tensor:
    out = answer["outputs"][0]
    return torch.tensor(out["data"], dtype=torch.float32).reshape(out["shape"])


def _replicas_running() -> int:
    app = serve.status().applications.get(APP)
    if app is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with Serve's proxy on a free port, 2 replicas of both MLPs."""
    from pt2interp.serve.ray import deploy

    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    port = _free_port()
    try:
        deploy(
            {"mlp": MLP, "dyn": DYN_MLP},
            port=port,
            app_name=APP,
            replicas=2,
            batch_size=4,
            batch_timeout_ms=2,
            threads=1,
            # half a CPU each: a replacement can be placed before the dead one's CPU is freed
            ray_actor_options={"num_cpus": 0.5},
            logging_config={"enable_access_log": False},
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@needs_ray
def test_replicas_answer_as_load_does(cluster):
    """Many concurrent requests to both models: every answer equals ``pt2interp.load(path)(x)``
    for its own input, and both replicas answered some."""
    programs = {"mlp": pt2interp.load(MLP), "dyn": pt2interp.load(DYN_MLP)}
    generator = torch.Generator().manual_seed(0)
    cases = [
        ("mlp", torch.randn(4, 16, generator=generator))
        if i % 2
        else ("dyn", torch.randn(1 + i % 5, 16, generator=generator))
        for i in range(48)
    ]
    replicas: set[str] = set()
    failures: list[str] = []

    def client(part: list) -> None:
        with httpx.Client(base_url=cluster, timeout=30) as http:
            for name, x in part:
                r = http.post(f"/v2/models/{name}/infer", json=_body(x))
                if r.status_code != 200:
                    failures.append(f"{name}: {r.status_code} {r.text}")
                    continue
                replicas.add(r.headers["x-pt2interp-replica"])
                want = programs[name](x)
                if not torch.allclose(_output(r.json()), want, rtol=1e-5, atol=1e-6):
                    failures.append(f"{name}: wrong answer for rows {x.shape[0]}")

    threads = [threading.Thread(target=client, args=(cases[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    assert len(replicas) == 2, replicas


@needs_ray
def test_metadata_and_errors_are_the_http_apps(cluster):
    """The routes are create_app's: metadata, and a wrong request's JSON 400."""
    with httpx.Client(base_url=cluster, timeout=30) as http:
        meta = http.get("/v2/models/dyn").json()
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
        r = http.post("/v2/models/dyn/infer", json={"inputs": [{"name": "x"}]})
        assert r.status_code == 400 and "error" in r.json()
        assert http.get("/v2/models/nope").status_code == 404
        assert http.get("/v2/health/ready").json() == {"ready": True}


@needs_ray
def test_killed_replica_loses_no_acknowledged_request(cluster):
    """A stream of requests while one replica is killed: a request is retried only when it got
    no 200; every 200 is the right answer; Serve brings the count back to 2 with a new replica."""
    program = pt2interp.load(DYN_MLP)
    seen: dict[str, int] = {}
    wrong: list[str] = []
    retried = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def client(seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        with httpx.Client(base_url=cluster, timeout=30) as http:
            while not stop.is_set():
                x = torch.randn(1 + seed % 3, 16, generator=generator)
                for _attempt in range(100):  # never acknowledged: send it again
                    try:
                        r = http.post("/v2/models/dyn/infer", json=_body(x))
                    except httpx.TransportError:
                        r = None
                    if r is not None and r.status_code == 200:
                        break
                    with lock:
                        retried[0] += 1
                    time.sleep(0.05)
                else:
                    wrong.append("a request was never answered")
                    return
                replica = r.headers["x-pt2interp-replica"]
                with lock:
                    seen[replica] = seen.get(replica, 0) + 1
                if not torch.allclose(_output(r.json()), program(x), rtol=1e-5, atol=1e-6):
                    wrong.append(f"wrong answer from {replica}")

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        # both busy, so that the victim dies with requests under way
        while not (len(seen) == 2 and min(seen.values()) >= 20) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(seen) == 2, f"both replicas should answer first: {seen}"
        victim = sorted(seen)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        before = set(seen)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if set(seen) - before and _replicas_running() == 2:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # a few answers from the new replica too
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    print(f"answers by replica {seen}, sends retried {retried[0]}")
    assert not wrong, wrong[:5]
    assert set(seen) - before, f"no replacement replica answered within 60 s: {seen}"
    assert _replicas_running() == 2
    assert sum(seen.values()) > 20


@needs_ray
def test_cli_serves_on_ray_until_sigterm():
    """`pt2interp serve --ray --replicas 2` on a local cluster of its own: answers as load does,
    and SIGTERM shuts Serve and the cluster down with exit status 0."""
    port = _free_port()
    command = [sys.executable, "-m", "pt2interp.cli", "serve", f"dyn={DYN_MLP}", "--ray"]
    command += ["--replicas", "2", "--port", str(port), "--batch-size", "4", "--threads", "1"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 90
        line = ""
        while "serving 2 Ray Serve replica(s)" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line or process.poll() is None, f"exited with {process.returncode}"
        x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/dyn/infer", json=_body(x), timeout=30)
        assert r.status_code == 200, r.text
        assert torch.allclose(_output(r.json()), pt2interp.load(DYN_MLP)(x), rtol=1e-5, atol=1e-6)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_import_without_ray_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as when absent
    monkeypatch.delitem(sys.modules, "pt2interp.serve.ray", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'pt2interp\[ray\]'") as caught:
        importlib.import_module("pt2interp.serve.ray")
    assert caught.value.name == "ray"


def test_cli_without_ray_says_what_to_install(tmp_path):
    script = (
        "import sys; sys.modules['ray'] = None\n"
        "from pt2interp.cli import main\n"
        f"sys.exit(main(['serve', {str(DYN_MLP)!r}, '--ray']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 1
    assert "pip install 'pt2interp[ray]'" in done.stderr, done.stderr


@needs_ray
def test_build_app_refuses_bad_options(tmp_path):
    from pt2interp.serve.ray import build_app

    with pytest.raises(ValueError, match="not both"):
        build_app(DYN_MLP, replicas=2, autoscaling={"min_replicas": 1, "max_replicas": 2})
    with pytest.raises(ValueError, match="positive"):
        build_app(DYN_MLP, replicas=0)
    with pytest.raises(FileNotFoundError):
        build_app(tmp_path / "missing.pt2")
    with pytest.raises(ValueError, match="two models named"):
        build_app([DYN_MLP, DYN_MLP])
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(DYN_MLP.read_bytes()[:3000])
    with pytest.raises(pt2interp.Pt2Error, match="truncated.pt2"):
        build_app(truncated)
