"""Triton Inference Server: the gRPC embedding client and the tritonserver launcher."""
