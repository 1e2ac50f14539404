"""The start of a run: the device, the precision, and the start model (the spec's or
``--init-checkpoint``'s weights; with fresh heads, its CLIP weights only).

Separate from the loop: this decides what the first step starts from, nothing after.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from lenscope.client.core.modelspec import ModelSpec, SpecError, resolve_checkpoint
from lenscope.export.model import LoadedModel, build_model, sha256_file
from lenscope.export.training.config import TrainConfig, TrainError


def device_for(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(cfg.device)


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "NO AVX", "AVX2") else "fp32"


def autocast(cfg: TrainConfig, device: torch.device):
    if resolve_precision(cfg, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _build(spec: ModelSpec, spec_dir: Path | None, fresh_heads: bool) -> LoadedModel:
    """build_model; with ``fresh_heads``, a lenscope checkpoint's heads are left out (its CLIP
    weights load strictly, the heads start from the spec's seeded init)."""
    path = resolve_checkpoint(spec, spec_dir)
    if not fresh_heads or path is None:
        return build_model(spec, spec_dir)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not (isinstance(obj, dict) and "clip" in obj):
        return build_model(spec, spec_dir)  # an open_clip checkpoint has no heads anyway
    model = build_model(spec.model_copy(update={"checkpoint": None}), spec_dir)
    try:
        model.clip.load_state_dict(obj["clip"], strict=True)
    except RuntimeError as err:
        raise SpecError(f"checkpoint {path}: clip weights do not match the spec's architecture: {err}") from None
    model.checkpoint, model.checkpoint_sha256 = path, sha256_file(path)
    return model


def init_model(spec: ModelSpec, cfg: TrainConfig, spec_dir: Path | None, init_checkpoint: str | Path | None,
                fresh_heads: bool) -> tuple[ModelSpec, LoadedModel, torch.device]:
    """The spec (pointed at ``init_checkpoint`` if given), the model built from it, and the device."""
    if init_checkpoint is not None:
        init_path = Path(init_checkpoint).expanduser().resolve()
        if not init_path.is_file():
            raise TrainError(f"init checkpoint {init_path} does not exist (nothing is downloaded)")
        spec = spec.model_copy(update={"checkpoint": str(init_path)})
    device = device_for(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        model = _build(spec, spec_dir, fresh_heads)
    except SpecError as err:
        raise TrainError(str(err)) from None
    return spec, model, device
