"""KServe's own Python model server on one ``.pt2`` archive: the baseline that
``python -m benchmarks.serve_bench --http`` sets pt2interp's server against.

Run by the KServe venv's python (``bash benchmarks/setup_kserve.sh`` makes it), never by
pt2interp's: KServe pins its own fastapi, uvicorn and pydantic.

    benchmarks/.venv-kserve/bin/python benchmarks/kserve_model.py \\
        --model_path fixtures/zoo/dynamic_batch_mlp.pt2 --model_name mlp --http_port 8080

It is a custom model the way KServe's docs write one: a ``kserve.Model`` subclass whose
``load`` builds the program (``torch.export.load(path).module()``) and whose ``predict`` takes
a v2 ``InferRequest``, runs the program on its first input and answers an ``InferResponse``
with one FP32 output named ``out`` (the name pt2interp gives it). One uvicorn worker, gRPC off,
no per-request log lines (pt2interp's server runs with ``--log-level warning`` likewise), so
that neither side pays for writing a log line per request.
"""

from __future__ import annotations

import argparse
import logging
import uuid

import kserve
import kserve.protocol.rest.server
import torch
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse


class LoopbackConfig(uvicorn.Config):
    """uvicorn's Config listening on 127.0.0.1: KServe's REST server asks for 0.0.0.0 and has
    no flag to change it, and a benchmark has no business listening on every interface."""

    def __init__(self, *args, **kwargs):
        kwargs["host"] = "127.0.0.1"
        super().__init__(*args, **kwargs)


class ExportedProgramModel(kserve.Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path
        self.program = None
        self.load()

    def load(self) -> bool:
        self.program = torch.export.load(self.path).module()
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = torch.from_numpy(payload.inputs[0].as_numpy())
        with torch.inference_mode():
            out = self.program(x)
        result = out.numpy()
        output = InferOutput(name="out", shape=list(result.shape), datatype="FP32", data=result)
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=[output],
        )


def main() -> None:
    # KServe's own flags (--http_port, --model_name, --workers, ...) come with its parser
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_path", required=True, help="the .pt2 archive")
    args, _ = parser.parse_known_args()
    kserve.protocol.rest.server.uvicorn.Config = LoopbackConfig
    model = ExportedProgramModel(args.model_name, args.model_path)
    server = kserve.ModelServer(
        http_port=args.http_port, workers=1, enable_grpc=False, enable_latency_logging=False
    )
    # ModelServer() has configured logging by now: silence the lines logged per request
    # (uvicorn's access log, and KServe's timing middleware, which still times each request)
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
