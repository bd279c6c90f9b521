"""Conformance with a client no one here wrote: Triton's ``tritonclient[http]`` (a full Open
Inference Protocol v2 client) drives the real server over loopback: health, metadata, infer
with JSON and with binary tensor data, outputs chosen and ordered, request ids, errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixture_cases import case
from helpers import running

import pt2interp

httpclient = pytest.importorskip(
    "tritonclient.http", reason="tritonclient[http] is in the test extras"
)
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

pytest.importorskip("fastapi", reason="fastapi is in the serve extras")
pytest.importorskip("uvicorn", reason="uvicorn is in the serve extras")

from pt2interp.serve import Server  # noqa: E402
from pt2interp.serve.http import create_app  # noqa: E402

DYN_MLP = case("zoo", "dynamic_batch_mlp").path
MULTI_IO = case("zoo", "multi_io").path


@pytest.fixture(scope="module")
def triton():
    servers = [
        Server(DYN_MLP, name="mlp", batch_size=8, batch_timeout_ms=1),
        Server(MULTI_IO, name="multi_io"),
    ]
    try:
        with running(create_app(servers)) as url:
            client = httpclient.InferenceServerClient(
                url=url.removeprefix("http://"), connection_timeout=30, network_timeout=30
            )
            yield client
            client.close()
    finally:
        for s in servers:
            s.shutdown(drain=False, timeout=2.0)


def test_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("mlp") and triton.is_model_ready("multi_io", model_version="1")
    assert not triton.is_model_ready("nope")
    meta = triton.get_server_metadata()
    assert meta["name"] == "pt2interp" and "binary_tensor_data" in meta["extensions"]
    model = triton.get_model_metadata("mlp")
    assert model["name"] == "mlp" and model["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 16]}
    ]
    assert model["outputs"] == [{"name": "out", "datatype": "FP32", "shape": [-1, 8]}]


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True], ids=["json-out", "binary-out"])
def test_infer_matches_the_program(triton, binary_in, binary_out):
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    x[0, 0] = float("nan")  # travels as "NaN" in JSON, as itself in binary
    inp = httpclient.InferInput("x", [5, 16], "FP32")
    inp.set_data_from_numpy(x.numpy(), binary_data=binary_in)
    out = httpclient.InferRequestedOutput("out", binary_data=binary_out)
    result = triton.infer("mlp", [inp], outputs=[out], request_id="req-1")
    got = torch.from_numpy(result.as_numpy("out").copy())
    want = pt2interp.load(DYN_MLP)(x)
    assert got.shape == (5, 8) and torch.equal(got.isnan(), want.isnan())
    assert torch.allclose(got.nan_to_num(), want.nan_to_num(), rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "req-1" and response["model_name"] == "mlp"


def test_many_inputs_chosen_outputs_in_the_requested_order(triton):
    (a, b, mask), kw = case("zoo", "multi_io").inputs()
    inputs = []
    for name, t, dt, binary in (
        ("a", a, "FP32", True),
        ("b", b, "FP32", False),
        ("mask", mask, "BOOL", True),
        ("scale", kw["scale"], "FP32", False),
    ):
        inp = httpclient.InferInput(name, list(t.shape), dt)
        inp.set_data_from_numpy(t.numpy(), binary_data=binary)
        inputs.append(inp)
    outputs = [
        httpclient.InferRequestedOutput("out.pair.1", binary_data=True),
        httpclient.InferRequestedOutput("out.cat", binary_data=False),
    ]
    result = triton.infer("multi_io", inputs, outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["out.pair.1", "out.cat"]
    want = pt2interp.load(MULTI_IO)(a, b, mask, **kw)
    assert np.array_equal(result.as_numpy("out.pair.1"), want["pair"][1].numpy())
    assert np.allclose(result.as_numpy("out.cat"), want["cat"].numpy(), rtol=1e-5, atol=1e-6)
    assert result.as_numpy("out.sum") is None  # not asked for


def test_errors_reach_the_client_as_messages(triton):
    inp = httpclient.InferInput("x", [2, 15], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 15), dtype=np.float32), binary_data=True)
    with pytest.raises(InferenceServerException, match="dim 1: expected 16, got 15"):
        triton.infer("mlp", [inp])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        triton.get_model_metadata("nope")
