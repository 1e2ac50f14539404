"""Export: torch/open_clip model -> ONNX -> verified -> Triton model repository."""
