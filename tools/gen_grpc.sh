#!/usr/bin/env bash
# Regenerate pt2interp/serve/proto/grpc_predict_v2_pb2{,_grpc}.py{,i} from the vendored
# grpc_predict_v2.proto (KServe's Open Inference Protocol v2 gRPC service).
#
#   tools/gen_grpc.sh              # with the python on PATH (needs grpcio-tools, see below)
#   PYTHON=/path/to/python tools/gen_grpc.sh
#
# The grpcio-tools release decides the protobuf runtime the generated code asks for (its
# version check): 1.76 writes gencode for protobuf 6.31.1, so the serve extra asks for
# protobuf>=6.31.1 and grpcio>=1.76. Install it with: pip install 'grpcio-tools==1.76.0'.
#
# The messages are built in a descriptor pool of their own, not protobuf's default one:
# tritonclient and kserve register the same "inference.*" names there from their own copies
# of the service, and one process may well import theirs and ours.
set -euo pipefail

cd "$(dirname "$0")/.."
python=${PYTHON:-python}
proto=pt2interp/serve/proto/grpc_predict_v2.proto
"$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. "$proto"

pb2=pt2interp/serve/proto/grpc_predict_v2_pb2.py
# Our own pool (see above); the builder works on any pool's descriptors.
sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/_POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = _POOL.AddSerializedFile(/' "$pb2"
grep -q '^_POOL = ' "$pb2" || { echo "gen_grpc.sh: the private-pool edit did not apply" >&2; exit 1; }
echo "generated: $pb2 and its _grpc.py, .pyi"
