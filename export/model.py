"""Build the torch model a spec describes: an open_clip CLIP plus attribute heads, weights loaded.

Nothing is downloaded: weights come from the spec's checkpoint file or from a seeded init. The
towers wrapped here are exactly what is exported, so ONNX parity is checked on the real thing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lenscope.client.core.durable_files import file_sha256 as sha256_file
from lenscope.client.core.modelspec import ModelSpec, SpecError, resolve_checkpoint

warnings.filterwarnings("ignore", message="Failed to load image Python extension")
import open_clip  # noqa: E402  (after the filter: torchvision's optional C extension is absent on CPU)


class AttributeHeads(nn.Module):
    """One classifier per attribute on the L2-normalised image embedding, softmax outputs."""

    def __init__(self, embed_dim: int, attributes: list[tuple[str, int]], hidden_dim: int = 0):
        super().__init__()
        self.names = [name for name, _ in attributes]
        self.heads = nn.ModuleDict()
        for name, n in attributes:
            if hidden_dim:
                self.heads[name] = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, n))
            else:
                self.heads[name] = nn.Linear(embed_dim, n)

    def logits(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: self.heads[name](embedding) for name in self.names}

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(F.softmax(self.heads[name](embedding), dim=-1) for name in self.names)


class ImageTower(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(pixel_values), dim=-1)


class TextTower(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(input_ids), dim=-1)


@dataclass
class LoadedModel:
    spec: ModelSpec
    clip: nn.Module
    heads: AttributeHeads
    checkpoint: Path | None
    checkpoint_sha256: str | None
    heads_trained: bool
    meta: dict | None = None  # a lenscope checkpoint's training metadata (held-out table, label sets)

    def towers(self) -> tuple[ImageTower, TextTower, AttributeHeads]:
        return ImageTower(self.clip).eval(), TextTower(self.clip).eval(), self.heads.eval()


def clip_config(spec: ModelSpec) -> dict:
    """The open_clip config dict for the spec, checked against the spec's declared dimensions."""
    if spec.architecture == "custom":
        cfg = dict(spec.clip_config or {})
    else:
        cfg = open_clip.get_model_config(spec.architecture)
        if cfg is None:
            known = ", ".join(sorted(open_clip.list_models())[:12])
            raise SpecError(f"architecture: unknown open_clip model {spec.architecture!r} (e.g. {known}, ...)")
    text = cfg.get("text_cfg", {})
    if text.get("hf_tokenizer_name") or text.get("hf_model_name"):
        raise SpecError(f"architecture: {spec.architecture!r} uses a HF tokenizer; only CLIP-BPE text towers are supported")
    checks = {
        "embed_dim": (spec.embed_dim, cfg.get("embed_dim")),
        "preprocess.image_size": (spec.preprocess.image_size, cfg.get("vision_cfg", {}).get("image_size")),
        "context_length": (spec.context_length, text.get("context_length", 77)),
    }
    for fld, (declared, actual) in checks.items():
        if actual is not None and declared != actual:
            raise SpecError(f"{fld}: spec says {declared} but {spec.architecture} has {actual}")
    return cfg


def build_model(spec: ModelSpec, spec_dir: Path | None = None) -> LoadedModel:
    cfg = clip_config(spec)
    ckpt = resolve_checkpoint(spec, spec_dir)
    torch.manual_seed(spec.init_seed)
    if spec.architecture == "custom":
        clip = open_clip.model.CLIP(**cfg)
    else:
        clip = open_clip.create_model(spec.architecture, pretrained=None, load_weights=False)
    attrs = [(a.name, len(a.labels)) for a in spec.attributes]
    heads = AttributeHeads(spec.embed_dim, attrs, spec.head_hidden_dim)
    heads_trained = False
    sha = None
    meta: dict = {}
    if ckpt is not None:
        sha = sha256_file(ckpt)
        heads_trained = _load_weights(clip, heads, ckpt, meta)
    clip.eval()
    heads.eval()
    return LoadedModel(spec, clip, heads, ckpt, sha, heads_trained, meta or None)


def _load_weights(clip: nn.Module, heads: AttributeHeads, path: Path, meta: dict) -> bool:
    """A lenscope checkpoint ({'clip': ..., 'heads': ..., 'meta': ...}; its meta copied into ``meta``) or
    any open_clip checkpoint file."""
    if path.suffix == ".safetensors":
        open_clip.load_checkpoint(clip, str(path))
        return False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise SpecError(f"checkpoint {path} could not be read as a torch checkpoint: {err}") from None
    if isinstance(obj, dict) and "clip" in obj:
        meta.update(obj.get("meta") or {})
        _load_state(clip, obj["clip"], path, "clip")
        if "heads" in obj and obj["heads"] is not None:
            _load_state(heads, obj["heads"], path, "heads")
            return True
        return False
    open_clip.load_checkpoint(clip, str(path))
    return False


def _load_state(module: nn.Module, state: dict, path: Path, part: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        if part == "heads":
            raise SpecError(f"checkpoint {path}: its heads do not fit the spec's attributes: "
                            f"{_heads_mismatch(module, state)}; the spec's label sets differ from the ones the "
                            "checkpoint was trained with (pass --fresh-heads to 'lenscope model train' to start "
                            "the heads afresh, or use the checkpoint's own spec)") from None
        raise SpecError(f"checkpoint {path}: {part} weights do not match the spec's architecture: {err}") from None


def _heads_mismatch(module: nn.Module, state: dict) -> str:
    """Which head differs and how: 'category: 10 labels in the checkpoint, 11 in the spec', missing/extra heads."""
    ours = module.state_dict()
    out = []
    names = {k.split(".")[1] for k in ours} | {k.split(".")[1] for k in state if k.count(".") >= 2}
    for name in sorted(names):
        mine = [k for k in ours if k.split(".")[1] == name]
        theirs = [k for k in state if k.count(".") >= 2 and k.split(".")[1] == name]
        if not theirs:
            out.append(f"attribute {name!r} has no head in the checkpoint")
        elif not mine:
            out.append(f"the checkpoint has a head for {name!r}, which the spec does not name")
        else:
            last = sorted(mine)[-1]
            if last in state and state[last].shape != ours[last].shape:
                out.append(f"attribute {name!r}: {state[last].shape[0]} labels in the checkpoint, "
                           f"{ours[last].shape[0]} in the spec")
            elif any(k in state and state[k].shape != ours[k].shape for k in mine) or set(mine) != set(theirs):
                out.append(f"attribute {name!r}: another head shape (head_hidden_dim)")
    return "; ".join(out) or "another head layout"


def save_checkpoint(model: LoadedModel, path: Path, extra: dict | None = None, half: bool = False) -> None:
    """A lenscope checkpoint: open_clip state dict + heads state dict (+ training metadata).

    Heads are written only when trained, so untrained heads never reload as `heads_trained`.
    `half` stores floating tensors as fp16 (half the size, for committing the shipped model);
    loading casts them back to fp32, and export verification then compares like with like.
    """
    def state(module: nn.Module) -> dict:
        sd = module.state_dict()
        return {k: v.half() if half and v.is_floating_point() else v for k, v in sd.items()}

    payload = {"clip": state(model.clip), "heads": state(model.heads) if model.heads_trained else None,
               "meta": extra or {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def open_clip_tokenize(spec: ModelSpec, texts: list[str]) -> torch.Tensor:
    """Reference tokenization (open_clip's own), used to verify the torch-free tokenizer and ONNX."""
    return open_clip.tokenizer.SimpleTokenizer(context_length=spec.context_length)(texts)
