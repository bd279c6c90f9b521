"""KServe's Open Inference Protocol v2 gRPC service (grpc_predict_v2.proto, Apache-2.0, vendored
as it is) and the modules protoc makes of it (tools/gen_grpc.sh regenerates them)."""
