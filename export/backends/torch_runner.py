"""Triton python model: a TorchScript encoder on the GPU in fp16 with CUDA graphs (or eager on the CPU).

Written by benchmarks/gpu_check.py for machines with a GPU and torch but no TensorRT (no NGC image):
the same tower the ONNX graph was exported from, traced to ``model.pt``. On CUDA the module runs in
fp16 and one CUDA graph is captured per batch bucket (``cuda_graph_batches``, e.g. 1,8,32) at load:
a batch is padded to the smallest bucket that holds it and replayed, so the per-kernel launch cost
of a ViT (hundreds of kernels) is paid once per batch, not per layer. On the CPU (the smoke run that
exercises this file on machines without a GPU) it runs eager in fp32.

``GraphRunner`` holds everything torch; the Triton glue below only moves tensors, so
benchmarks/gpu_check.py uses the same class in-process as the baseline.
"""

from __future__ import annotations

import json

import numpy as np


class GraphRunner:
    """One traced tower on one device: ``run(np.ndarray) -> np.ndarray`` (float32 out)."""

    def __init__(self, path: str, device: str = "cuda", fp16: bool = True, graph_batches: tuple[int, ...] = (1, 8, 32),
                 example_shape: tuple[int, ...] = (), example_dtype: str = "float32") -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device if device != "cuda" or torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        self.fp16 = fp16 and self.cuda
        module = torch.jit.load(path, map_location=self.device).eval()
        self.module = module.half() if self.fp16 else module
        self.float_input = example_dtype.startswith("float")
        if not self.cuda:  # one thread per instance, as the onnxruntime runner: Triton runs the instances side by side
            torch.set_num_threads(1)
        self.batches = tuple(sorted(set(graph_batches))) if self.cuda else ()
        self.graphs: dict[int, tuple] = {}
        if self.batches:
            self._capture(example_shape, example_dtype)

    def _input(self, x: np.ndarray):
        t = self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        return t.half() if (self.fp16 and self.float_input) else t

    def _capture(self, shape: tuple[int, ...], dtype: str) -> None:
        torch = self.torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for b in self.batches:  # warm-up on a side stream (cuDNN/cuBLAS pick their kernels)
                static = self._input(np.zeros((b, *shape), dtype=dtype))
                for _ in range(3):
                    self.module(static)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.inference_mode():
            for b in self.batches:
                static = self._input(np.zeros((b, *shape), dtype=dtype))
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = self.module(static)
                self.graphs[b] = (graph, static, out)

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            if not self.graphs:
                # No TorchScript profiling/fusion passes on the CPU: they re-specialise per batch shape
                # (seconds each on a small box) for no gain on an eager smoke path.
                with torch.jit.optimized_execution(False):
                    return self.module(self._input(x)).float().cpu().numpy()
            parts, top = [], self.batches[-1]
            for start in range(0, len(x), top):
                chunk = x[start:start + top]
                b = next(size for size in self.batches if size >= len(chunk))
                graph, static, out = self.graphs[b]
                static[: len(chunk)].copy_(self._input(chunk))
                if len(chunk) < b:
                    static[len(chunk):].zero_()
                graph.replay()
                parts.append(out[: len(chunk)].float().cpu().numpy())
            return np.concatenate(parts)


class TritonPythonModel:
    def initialize(self, args):
        import os

        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        (inp,) = config["input"]
        self.input_name, self.output_name = inp["name"], config["output"][0]["name"]
        dtype = "int64" if inp["data_type"] == "TYPE_INT64" else "float32"
        path = os.path.join(args["model_repository"], args["model_version"], params.get("torchscript", "model.pt"))
        self.runner = GraphRunner(
            path, device=params.get("device", "cuda"), fp16=params.get("precision", "fp16") == "fp16",
            graph_batches=tuple(int(b) for b in params.get("cuda_graph_batches", "1,8,32").split(",") if b),
            example_shape=tuple(int(d) for d in inp["dims"]), example_dtype=dtype,
        )

    def execute(self, requests):
        pb = self.pb
        arrays = [pb.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        try:
            out = self.runner.run(np.concatenate(arrays))
        except Exception as err:  # noqa: BLE001 - fail these requests, not the model
            error = pb.TritonError(f"{type(err).__name__}: {err}")
            return [pb.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            tensor = pb.Tensor(self.output_name, np.ascontiguousarray(out[start:start + n], dtype=np.float32))
            responses.append(pb.InferenceResponse(output_tensors=[tensor]))
            start += n
        return responses
