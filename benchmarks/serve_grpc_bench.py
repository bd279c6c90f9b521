"""REST against gRPC on one ``pt2interp serve`` process: requests per second for the same model,
request size and concurrency, over the Open Inference Protocol's JSON, its binary tensor data
extension, and gRPC with ``raw_input_contents``.

    python -m benchmarks.serve_grpc_bench                       # rows 1,32; c 1,16,64; 5 s each
    python -m benchmarks.serve_grpc_bench --quick               # c=16, 1 row, 2 s: a smoke check
    python -m benchmarks.serve_grpc_bench --rows 1 --concurrency 64 --seconds 10 --json out.json

One server, ``pt2interp serve mlp=fixtures/zoo/dynamic_batch_mlp.pt2 --port P --grpc-port G
--batch-size 16 --batch-timeout-ms 2 --threads 1`` (``--batch-size`` changes it), serves both
protocols from the same models, batches and threads: only the protocol differs between rows.
The load comes from one client process on one asyncio loop holding ``c`` requests in flight
(a closed loop: each sends its next request as soon as the last is answered), with aiohttp
(keep-alive, C parser) for REST and ``grpc.aio`` (one channel, HTTP/2) for gRPC. Each cell
runs ``--seconds`` after ``--warmup`` seconds at the same load; before timing, every protocol's
answers to the cell's request are checked against ``pt2interp.load(path)(x)``.

Columns: ``req/s`` answered requests per second; ``server CPU ms/req`` the server process's CPU
time over the timed run per request (what a request costs it, whatever else the machine runs);
``client CPU ms/req`` the same for the client process, which on a 2-core machine takes CPU the
server would otherwise have; ``errors`` failed requests (any makes the row suspect).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.serve_http_bench import free_port, tree_cpu_s

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "fixtures" / "zoo" / "dynamic_batch_mlp.pt2"
PROTOCOLS = ("rest-json", "rest-binary", "grpc-raw")


# -- the client (a process of its own) -------------------------------------------------------------
def rest_request(x: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    entry = {"name": "x", "shape": list(x.shape), "datatype": "FP32"}
    if not binary:
        entry["data"] = x.reshape(-1).tolist()
        return json.dumps({"inputs": [entry]}).encode(), {"content-type": "application/json"}
    raw = x.tobytes()
    entry["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(
        {"inputs": [entry], "outputs": [{"name": "out", "parameters": {"binary_data": True}}]}
    ).encode()
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return header + raw, headers


def rest_answer(body: bytes, headers) -> np.ndarray:
    length = headers.get("inference-header-content-length")
    if length is None:
        out = json.loads(body)["outputs"][0]
        return np.array(out["data"], dtype=np.float32).reshape(out["shape"])
    out = json.loads(body[: int(length)])["outputs"][0]
    return np.frombuffer(body[int(length) :], dtype=np.float32).reshape(out["shape"])


async def run_client(protocol: str, port: int, rows: int, c: int, warmup: float, seconds: float):
    """One cell: answers checked, then ``c`` requests in flight for ``warmup + seconds``."""
    import grpc

    from pt2interp.serve.proto import grpc_predict_v2_pb2 as pb
    from pt2interp.serve.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    x = np.random.default_rng(rows).standard_normal((rows, 16), dtype=np.float32)
    if protocol == "grpc-raw":
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="mlp")
        request.inputs.add(name="x", datatype="FP32", shape=[rows, 16])
        request.raw_input_contents.append(x.tobytes())

        async def call() -> np.ndarray:
            answer = await stub.ModelInfer(request, timeout=30)
            return np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(rows, 8)

        close = channel.close
    else:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c))
        body, headers = rest_request(x, binary=protocol == "rest-binary")
        url = f"http://127.0.0.1:{port}/v2/models/mlp/infer"

        async def call() -> np.ndarray:
            async with session.post(url, data=body, headers=headers) as r:
                content = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {content[:200]!r}")
                return rest_answer(content, r.headers)

        close = session.close

    answer = await call()
    counts = {"done": 0, "errors": 0}
    timing = {"on": False}

    async def worker(stop_at: float) -> None:
        while time.perf_counter() < stop_at:
            try:
                await call()
                if timing["on"]:
                    counts["done"] += 1
            except Exception:  # noqa: BLE001 - counted, the load goes on
                if timing["on"]:
                    counts["errors"] += 1

    start = time.perf_counter()
    stop_at = start + warmup + seconds
    tasks = [asyncio.create_task(worker(stop_at)) for _ in range(c)]
    await asyncio.sleep(warmup)
    timing["on"] = True
    cpu0, t0 = time.process_time(), time.perf_counter()
    print(json.dumps({"event": "timing"}), flush=True)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    await close()
    return {"x": x.tolist(), "answer": answer.tolist(), "counts": counts, "elapsed": elapsed,
            "client_cpu_s": cpu}  # fmt: skip


def client_main(argv: list[str]) -> int:
    protocol, port, rows, c, warmup, seconds = argv
    result = asyncio.run(
        run_client(protocol, int(port), int(rows), int(c), float(warmup), float(seconds))
    )
    print(json.dumps({"event": "done", **result}), flush=True)
    return 0


# -- the driver ----------------------------------------------------------------------------------
def start_server(http_port: int, grpc_port: int, batch_size: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "pt2interp.cli", "serve", f"mlp={MODEL}"]
    command += ["--port", str(http_port), "--grpc-port", str(grpc_port), "--threads", "1"]
    command += ["--batch-size", str(batch_size), "--batch-timeout-ms", "2"]
    command += ["--log-level", "warning"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=120)
    deadline = time.monotonic() + 60
    import urllib.request

    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2)
            return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the server did not start") from None
            time.sleep(0.2)


def run_cell(server, ports, protocol, rows, c, warmup, seconds, want) -> dict:
    port = ports["grpc"] if protocol.startswith("grpc") else ports["http"]
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.serve_grpc_bench",
            "--client",
            protocol,
            str(port),
            str(rows),
            str(c),
            str(warmup),
            str(seconds),
        ],  # fmt: skip
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    cpu0 = None
    result = None
    for line in client.stdout:
        message = json.loads(line)
        if message["event"] == "timing":
            cpu0 = tree_cpu_s(server.pid)
        elif message["event"] == "done":
            result = message
    server_cpu = tree_cpu_s(server.pid) - cpu0
    if client.wait() != 0 or result is None:
        raise RuntimeError(f"the {protocol} client failed")
    x = np.array(result["x"], dtype=np.float32)
    if not np.allclose(np.array(result["answer"]), want(x), rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{protocol}: a wrong answer for {rows} rows")
    done = max(result["counts"]["done"], 1)
    return {
        "protocol": protocol,
        "rows": rows,
        "c": c,
        "rps": round(result["counts"]["done"] / result["elapsed"], 1),
        "server_cpu_ms": round(1000 * server_cpu / done, 3),
        "client_cpu_ms": round(1000 * result["client_cpu_s"] / done, 3),
        "errors": result["counts"]["errors"],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:
        return client_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,32", help="rows per request (default 1,32)")
    parser.add_argument("--concurrency", default="1,16,64", help="in flight (default 1,16,64)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before timing")
    parser.add_argument("--batch-size", type=int, default=16, help="the server's --batch-size")
    parser.add_argument("--quick", action="store_true", help="c=16, 1 row, 2 s")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.concurrency, args.seconds, args.warmup = "1", "16", 2.0, 0.5

    import torch

    import pt2interp

    program = pt2interp.load(MODEL)

    def want(x: np.ndarray) -> np.ndarray:
        return program(torch.from_numpy(x)).numpy()

    ports = {"http": free_port(), "grpc": free_port()}
    server = start_server(ports["http"], ports["grpc"], args.batch_size)
    cells = []
    try:
        for rows in map(int, args.rows.split(",")):
            for c in map(int, args.concurrency.split(",")):
                for protocol in PROTOCOLS:
                    cells.append(
                        run_cell(server, ports, protocol, rows, c, args.warmup, args.seconds, want)
                    )
    finally:
        server.terminate()
        server.wait(30)
    print(f"pt2interp serve --batch-size {args.batch_size} --threads 1, {os.cpu_count()} CPUs")
    print(f"{'protocol':<12} {'rows':>4} {'c':>3} {'req/s':>9} {'server CPU ms/req':>18} "
          f"{'client CPU ms/req':>18} {'errors':>6}")  # fmt: skip
    for cell in cells:
        print(f"{cell['protocol']:<12} {cell['rows']:>4} {cell['c']:>3} {cell['rps']:>9.1f} "
              f"{cell['server_cpu_ms']:>18.3f} {cell['client_cpu_ms']:>18.3f} "
              f"{cell['errors']:>6}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(cells, indent=1))
    return 0 if all(cell["errors"] == 0 for cell in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
