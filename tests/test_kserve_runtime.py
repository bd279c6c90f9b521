"""The KServe runtime in deploy/kserve: its manifests are valid KServe objects, and its container
command serves a model as KServe starts it (no Kubernetes, no container: the command itself).

The schemas under tests/data/kserve/ are derived from the kserve SDK's model classes
(derive_schemas.py says how) and are strict: a field KServe does not know is an error, as with
``kubectl apply`` under server-side field validation.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pt2interp.cli import _serve_targets
from pt2interp.errors import Pt2Error

yaml = pytest.importorskip("yaml", reason="needs PyYAML (the test extra)")
jsonschema = pytest.importorskip("jsonschema", reason="needs jsonschema (the test extra)")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kserve"
SCHEMAS = Path(__file__).parent / "data" / "kserve"
MLP = ROOT / "fixtures" / "zoo" / "dynamic_batch_mlp.pt2"  # x: FP32 [batch, 16] -> [batch, 8]
PYPROJECT = ROOT / "pyproject.toml"
MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts the storageUri's contents


def _manifest(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _validator(stem: str):
    schema = json.loads((SCHEMAS / f"{stem}.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _errors(stem: str, document: dict) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}"
        for e in _validator(stem).iter_errors(document)
    ]


def _container(runtime: dict) -> dict:
    (container,) = runtime["spec"]["containers"]
    return container


# -- the manifests ---------------------------------------------------------------------------------
def test_servingruntime_is_a_valid_kserve_object():
    runtime = _manifest("servingruntime.yaml")
    assert _errors("servingruntime", runtime) == []
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["kind"] == "ServingRuntime"
    assert {f["name"] for f in runtime["spec"]["supportedModelFormats"]} == {"pt2"}
    assert runtime["spec"]["protocolVersions"] == ["v2"]


def test_inferenceservice_is_a_valid_kserve_object_on_our_runtime():
    runtime, isvc = _manifest("servingruntime.yaml"), _manifest("inferenceservice.yaml")
    assert _errors("inferenceservice", isvc) == []
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]


@pytest.mark.parametrize(
    "path, bad, reason",
    [
        (
            ("spec", "containers", 0, "readinessProbe"),
            {"httpGet": {"path": "/v2/health/ready"}},
            "readinessProbe.httpGet: 'port' is a required property",
        ),
        (("spec", "containers", 0, "args"), "{{.Name}}=/mnt/models", "is not of type 'array'"),
        (("spec", "supportedModelFormats", 0, "autoselect"), True, "'autoselect' was unexpected"),
        (("spec", "protocolVersion"), ["v2"], "'protocolVersion' was unexpected"),
    ],
    ids=["probe-without-port", "args-not-a-list", "misspelt-field", "field-of-another-kind"],
)
def test_the_schema_rejects_what_kserve_would(path, bad, reason):
    runtime = copy.deepcopy(_manifest("servingruntime.yaml"))
    node = runtime
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    (error,) = _errors("servingruntime", runtime)
    assert reason in error


def test_the_container_listens_where_kserve_looks():
    container = _container(_manifest("servingruntime.yaml"))
    args = container["args"]
    port = int(args[args.index("--port") + 1])
    assert args[args.index("--host") + 1] == "0.0.0.0"  # the pod's IP, not loopback
    assert [p["containerPort"] for p in container["ports"]] == [port] == [8080]
    assert f"{{{{.Name}}}}={MODEL_DIR}" in args
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of each instruction of the Dockerfile."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_the_image_is_what_the_runtime_expects():
    container = _container(_manifest("servingruntime.yaml"))
    steps = _dockerfile()
    assert ("EXPOSE", str(container["ports"][0]["containerPort"])) in steps
    assert ("USER", str(container["securityContext"]["runAsUser"])) in steps
    assert container["command"][0] in re.findall(r"^(\w+) = ", PYPROJECT.read_text(), re.M)
    # Every source folder pyproject maps to a package is copied in, or pip install . breaks.
    folders = set(re.findall(r'^"pt2interp[\w.]*" = "(\w+)', PYPROJECT.read_text(), re.M))
    copied = {args.split()[0] for kind, args in steps if kind == "COPY"}
    assert folders and folders <= copied, f"not copied into the image: {folders - copied}"


# -- a directory as the model to serve -------------------------------------------------------------
def test_a_named_directory_serves_its_one_archive(tmp_path):
    shutil.copy(MLP, tmp_path / "model.pt2")
    (tmp_path / "notes.txt").write_text("not a model")
    assert _serve_targets([f"mlp={tmp_path}"]) == [("mlp", str(tmp_path / "model.pt2"))]


def test_a_directory_without_a_name_serves_each_archive_after_its_file(tmp_path):
    for stem in ("b", "a"):
        shutil.copy(MLP, tmp_path / f"{stem}.pt2")
    assert _serve_targets([str(tmp_path)]) == [
        ("", str(tmp_path / "a.pt2")),
        ("", str(tmp_path / "b.pt2")),
    ]


def test_a_directory_that_cannot_name_one_model_says_why(tmp_path):
    with pytest.raises(Pt2Error, match="no .pt2 file"):
        _serve_targets([f"mlp={tmp_path}"])
    for stem in ("a", "b"):
        shutil.copy(MLP, tmp_path / f"{stem}.pt2")
    with pytest.raises(Pt2Error, match=r"several \.pt2 files \(a\.pt2, b\.pt2\)"):
        _serve_targets([f"mlp={tmp_path}"])


# -- the container's command, as KServe starts it -------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _executable(name: str) -> list[str]:
    """The console script the image installs, from this Python's environment."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", f"{name}.cli"]


def _as_kserve_starts_it(container: dict, isvc_name: str, model_dir: Path, port: int) -> list[str]:
    """The container's argv with KServe's substitutions: {{.Name}}, the mount and the port.

    The mount and port are this machine's stand-ins for the pod's /mnt/models and 8080.
    """
    command = container["command"]
    argv = _executable(command[0]) + command[1:]
    for arg in container["args"]:
        arg = arg.replace("{{.Name}}", isvc_name).replace(MODEL_DIR, str(model_dir))
        argv.append(str(port) if arg == "8080" else arg)
    return argv


def test_the_container_command_serves_the_model_kserve_mounts(tmp_path):
    httpx = pytest.importorskip("httpx", reason="needs httpx (the serve extra)")
    pytest.importorskip("uvicorn", reason="needs the serve extra")
    torch = pytest.importorskip("torch", reason="running a model needs torch")
    import pt2interp

    runtime, isvc = _manifest("servingruntime.yaml"), _manifest("inferenceservice.yaml")
    container = _container(runtime)
    name = isvc["metadata"]["name"]
    # The storage initializer copies a file storageUri to /mnt/models/<its file name>.
    storage_uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    model_dir = tmp_path / "mnt" / "models"
    model_dir.mkdir(parents=True)
    shutil.copy(MLP, model_dir / storage_uri.rsplit("/", 1)[1])

    port = _free_port()
    argv = _as_kserve_starts_it(container, name, model_dir, port)
    # What Knative sets in the pod (serverless mode): the port it routes to, and who it is.
    env = dict(
        os.environ,
        PORT=str(port),
        K_SERVICE=f"{name}-predictor",
        K_CONFIGURATION=f"{name}-predictor",
        K_REVISION=f"{name}-predictor-00001",
    )
    proc = subprocess.Popen(
        argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None, f"the server exited: {proc.stdout.read()}"
            assert time.monotonic() < deadline, "not ready within 60 s"
            time.sleep(0.2)

        assert httpx.get(f"{base}/v2/health/live", timeout=5).status_code == 200
        meta = httpx.get(f"{base}/v2/models/{name}", timeout=5).json()
        assert meta["name"] == name and [i["name"] for i in meta["inputs"]] == ["x"]

        x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
        request = {
            "inputs": [
                {"name": "x", "shape": [3, 16], "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
        answer = httpx.post(f"{base}/v2/models/{name}/infer", json=request, timeout=30)
        assert answer.status_code == 200, answer.text
        (out,) = answer.json()["outputs"]
        expected = pt2interp.load(MLP)(torch.from_numpy(x)).numpy()
        assert out["shape"] == list(expected.shape) and out["datatype"] == "FP32"
        np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]), expected, rtol=1e-6)

        proc.send_signal(signal.SIGTERM)  # how the kubelet stops a pod
        assert proc.wait(timeout=30) == 0, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
