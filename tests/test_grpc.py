"""The Open Inference Protocol over gRPC (pt2interp.serve.grpc): a client from the stubs protoc
made of the same proto calls every RPC of a server running in this process; infer answers equal
the program's own and the REST answers for the same inputs; errors carry the right status codes;
gRPC and REST requests share one model's batches. Triton's gRPC client, where installed, too.
"""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from fixture_cases import case

import pt2interp

grpc = pytest.importorskip("grpc", reason="grpcio is in the serve extras")
pytest.importorskip("google.protobuf", reason="protobuf is in the serve extras")
TestClient = pytest.importorskip(
    "fastapi.testclient", reason="fastapi is in the serve extras"
).TestClient

from pt2interp.serve import Server, create_app  # noqa: E402
from pt2interp.serve.grpc import GrpcLimits, GrpcThread  # noqa: E402
from pt2interp.serve.proto import grpc_predict_v2_pb2 as pb  # noqa: E402
from pt2interp.serve.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub  # noqa: E402

MLP = case("zoo", "mlp").path
DYN_MLP = case("zoo", "dynamic_batch_mlp").path
MULTI_IO = case("zoo", "multi_io").path
NP_DTYPE = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_}
OIP = {torch.float32: "FP32", torch.int64: "INT64", torch.bool: "BOOL"}
TORCH_DTYPE = {"FP32": torch.float32, "INT64": torch.int64, "BOOL": torch.bool}


@pytest.fixture(scope="module")
def served():
    servers = {
        "mlp": Server(MLP, name="grpc-mlp"),
        "dyn": Server(DYN_MLP, name="grpc-dyn", batch_size=16, batch_timeout_ms=20),
        "multi_io": Server(MULTI_IO, name="grpc-multi-io"),
    }
    front = GrpcThread(servers, port=0, limits=GrpcLimits(max_message_bytes=1 << 20))
    channel = grpc.insecure_channel(f"127.0.0.1:{front.port}")
    try:
        yield GRPCInferenceServiceStub(channel), TestClient(create_app(servers)), servers, front
    finally:
        channel.close()
        front.stop(grace=1)
        for s in servers.values():
            s.shutdown(drain=False, timeout=2.0)


def infer_request(model, tensors, raw=True, outputs=None, request_id=""):
    """A ModelInferRequest with ``tensors`` (name -> tensor) as raw or typed contents."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    for name, t in tensors.items():
        entry = request.inputs.add(name=name, datatype=OIP[t.dtype], shape=list(t.shape))
        if raw:
            request.raw_input_contents.append(t.numpy().tobytes())
        else:
            field = {"FP32": "fp32_contents", "INT64": "int64_contents", "BOOL": "bool_contents"}
            getattr(entry.contents, field[OIP[t.dtype]]).extend(t.reshape(-1).tolist())
    for name in outputs or []:
        request.outputs.add(name=name)
    return request


def outputs_of(response):
    assert len(response.outputs) == len(response.raw_output_contents)
    return {
        o.name: torch.from_numpy(
            np.frombuffer(raw, dtype=NP_DTYPE[o.datatype]).reshape(list(o.shape)).copy()
        )
        for o, raw in zip(response.outputs, response.raw_output_contents)
    }


def rest_outputs(client, model, tensors, outputs=None):
    body = {
        "inputs": [
            {
                "name": n,
                "shape": list(t.shape),
                "datatype": OIP[t.dtype],
                "data": t.reshape(-1).tolist(),
            }
            for n, t in tensors.items()
        ]
    }
    if outputs:
        body["outputs"] = [{"name": n} for n in outputs]
    r = client.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    return {
        o["name"]: torch.tensor(o["data"], dtype=TORCH_DTYPE[o["datatype"]]).reshape(o["shape"])
        for o in r.json()["outputs"]
    }


def code_of(call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code(), info.value.details()


# -- health and metadata ---------------------------------------------------------------------------
def test_health_and_metadata(served):
    stub, client, _, _ = served
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="mlp")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="mlp", version="1")).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "pt2interp" and meta.version == pt2interp.__version__
    for name in ("mlp", "dyn", "multi_io"):
        got = stub.ModelMetadata(pb.ModelMetadataRequest(name=name))
        want = client.get(f"/v2/models/{name}").json()
        assert got.name == want["name"] == name and list(got.versions) == want["versions"]
        assert got.platform == want["platform"]
        for ours, theirs in ((got.inputs, want["inputs"]), (got.outputs, want["outputs"])):
            assert [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ours
            ] == theirs


# -- infer -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_mlp_equals_program_and_rest(served, raw):
    stub, client, _, _ = served
    for model, path, rows in (("mlp", MLP, 4), ("dyn", DYN_MLP, 3)):
        x = torch.randn(rows, 16)
        got = outputs_of(stub.ModelInfer(infer_request(model, {"x": x}, raw, request_id="r1")))
        want = pt2interp.load(path)(x)
        assert torch.equal(got["out"], want)
        assert torch.equal(got["out"], rest_outputs(client, model, {"x": x})["out"])


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_multi_io_equals_program_and_rest(served, raw):
    stub, client, _, _ = served
    (a, b, mask), kw = case("zoo", "multi_io").inputs()
    tensors = {"a": a, "b": b, "mask": mask, "scale": kw["scale"]}
    response = stub.ModelInfer(infer_request("multi_io", tensors, raw, request_id="id-7"))
    assert response.id == "id-7" and response.model_name == "multi_io"
    got = outputs_of(response)
    want = pt2interp.load(MULTI_IO)(a, b, mask, **kw)
    assert torch.equal(got["out.sum"], want["sum"]) and torch.equal(got["out.cat"], want["cat"])
    assert torch.equal(got["out.pair.0"], want["pair"][0])
    assert torch.equal(got["out.pair.1"], want["pair"][1])
    rest = rest_outputs(client, "multi_io", tensors)
    assert list(got) == list(rest) and all(torch.equal(got[k], rest[k]) for k in rest)

    # outputs come back as requested, in that order
    chosen = ["out.pair.1", "out.sum"]
    response = stub.ModelInfer(infer_request("multi_io", tensors, raw, outputs=chosen))
    assert [o.name for o in response.outputs] == chosen
    got = outputs_of(response)
    assert torch.equal(got["out.pair.1"], want["pair"][1])


# -- errors ----------------------------------------------------------------------------------------
def test_errors_have_status_codes_and_clear_messages(served):
    stub, _, _, _ = served
    x = torch.zeros(2, 16)
    not_found = grpc.StatusCode.NOT_FOUND
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    code, details = code_of(stub.ModelInfer, infer_request("nope", {"x": x}))
    assert code == not_found and "unknown model 'nope'" in details and "mlp" in details
    code, details = code_of(stub.ModelMetadata, pb.ModelMetadataRequest(name="nope"))
    assert code == not_found
    code, details = code_of(stub.ModelReady, pb.ModelReadyRequest(name="mlp", version="2"))
    assert code == not_found and "version" in details

    request = infer_request("dyn", {"x": x})
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    code, details = code_of(stub.ModelInfer, request)
    assert code == invalid and "raw_input_contents[0] has 124 bytes" in details

    request = infer_request("dyn", {"y": x})
    code, details = code_of(stub.ModelInfer, request)
    assert code == invalid and "no input 'y'" in details

    request = infer_request("dyn", {"x": x})
    request.inputs[0].datatype = "INT32"  # as many bytes as FP32
    code, details = code_of(stub.ModelInfer, request)
    assert code == invalid and "does not match the model's FP32" in details

    request = infer_request("dyn", {"x": x}, raw=False)
    request.inputs[0].contents.Clear()
    request.inputs[0].contents.int64_contents.extend([0] * 32)
    code, details = code_of(stub.ModelInfer, request)
    assert code == invalid and "takes its values in fp32_contents" in details

    request = infer_request("dyn", {"x": x}, outputs=["nope"])
    code, details = code_of(stub.ModelInfer, request)
    assert code == invalid and "no output 'nope'" in details

    request = infer_request("dyn", {"x": x})
    request.raw_input_contents.append(b"1234")
    code, details = code_of(stub.ModelInfer, request)
    assert code == invalid and "2 entries for 1 inputs" in details

    code, details = code_of(stub.ModelInfer, infer_request("mlp", {"x": torch.zeros(3, 16)}))
    assert code == invalid  # mlp is exported for 4 rows, unbatched: the server says so

    big = infer_request("dyn", {"x": torch.zeros(20_000, 16)})  # 1.3 MB, over the 1 MiB limit
    code, _ = code_of(stub.ModelInfer, big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_no_answer_in_time_is_deadline_exceeded_and_withdrawn(served, monkeypatch):
    _, _, servers, _ = served
    server = servers["dyn"]
    withdrawn = []
    # a request the worker never answers: held, so that only the deadline can end it
    monkeypatch.setattr(server, "submit_leaves", lambda leaves, on_done: "handle")
    monkeypatch.setattr(server, "withdraw", lambda handle, error: withdrawn.append((handle, error)))
    front = GrpcThread({"dyn": server}, port=0, limits=GrpcLimits(request_timeout_s=0.2))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            stub = GRPCInferenceServiceStub(channel)
            request = infer_request("dyn", {"x": torch.zeros(1, 16)})
            code, details = code_of(stub.ModelInfer, request, timeout=30)
    finally:
        front.stop(grace=1)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "no answer within 0.2 s" in details
    assert [h for h, _ in withdrawn] == ["handle"]


# -- batching shared with REST ---------------------------------------------------------------------
def test_concurrent_requests_are_batched(served):
    stub, client, servers, _ = served
    server = servers["dyn"]
    before = server.info()
    xs = [torch.randn(1, 16) for _ in range(24)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        grpc_answers = list(pool.map(lambda x: stub.ModelInfer(infer_request("dyn", {"x": x})), xs))
        rest_answers = list(pool.map(lambda x: rest_outputs(client, "dyn", {"x": x}), xs))
    program = pt2interp.load(DYN_MLP)
    for x, g, r in zip(xs, grpc_answers, rest_answers):
        want = program(x)
        assert torch.allclose(outputs_of(g)["out"], want, atol=1e-6)
        assert torch.allclose(r["out"], want, atol=1e-6)
    after = server.info()
    runs = after["batch_count"] - before["batch_count"]
    requests = after["request_count"] - before["request_count"]
    assert requests == 48 and runs < requests, (runs, requests)


# -- Triton's own gRPC client ----------------------------------------------------------------------
def test_triton_grpc_client(served):
    tg = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is in the test extras")
    _, _, _, front = served
    client = tg.InferenceServerClient(f"127.0.0.1:{front.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("dyn")
    assert client.get_model_metadata("dyn").inputs[0].name == "x"
    x = np.random.default_rng(0).standard_normal((5, 16), dtype=np.float32)
    entry = tg.InferInput("x", [5, 16], "FP32")
    entry.set_data_from_numpy(x)
    result = client.infer("dyn", [entry], outputs=[tg.InferRequestedOutput("out")], request_id="t")
    assert result.get_response().id == "t"
    assert np.array_equal(
        result.as_numpy("out"), pt2interp.load(DYN_MLP)(torch.from_numpy(x)).numpy()
    )
    with pytest.raises(tg.InferenceServerException, match="unknown model"):
        client.infer("nope", [entry])
    client.close()


# -- pt2interp serve --grpc-port ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_serves_grpc_beside_http_and_stops_on_sigterm():
    http_port, grpc_port = _free_port(), _free_port()
    command = [sys.executable, "-m", "pt2interp.cli", "serve", f"mlp={DYN_MLP}"]
    command += ["--port", str(http_port), "--grpc-port", str(grpc_port), "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = GRPCInferenceServiceStub(channel)
            x = torch.randn(2, 16)
            got = outputs_of(stub.ModelInfer(infer_request("mlp", {"x": x}), timeout=30))
            assert torch.equal(got["out"], pt2interp.load(DYN_MLP)(x))
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output.decode()
    assert f"serving gRPC on 127.0.0.1:{grpc_port}" in output.decode()
