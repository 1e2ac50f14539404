"""Numerical verification of exported ONNX graphs against the torch model they came from.

A graph that disagrees with torch is never published: the export stops with the numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from pydantic import BaseModel

from lenscope.client.core import contract
from lenscope.export.model import LoadedModel, open_clip_tokenize

MAX_ABS_DIFF = 1e-4
MIN_COSINE = 0.9999

VERIFY_TEXTS = [
    "red floral summer dress",
    "navy striped cotton t-shirt by Northwind",
    "",
    "Ünïcödé 靴 👟 sneaker — size 42",
    "a photo of a black leather handbag with a gold buckle, perfect for evenings out and long trips",
    "mug",
    "WHITE   dotted\tbackpack",
]


class TowerCheck(BaseModel):
    batch: int
    max_abs_diff: float
    min_cosine: float
    passed: bool


class VerificationReport(BaseModel):
    tolerance_max_abs_diff: float = MAX_ABS_DIFF
    tolerance_min_cosine: float = MIN_COSINE
    towers: dict[str, list[TowerCheck]]

    @property
    def passed(self) -> bool:
        return all(c.passed for checks in self.towers.values() for c in checks)


class VerificationError(RuntimeError):
    def __init__(self, report: VerificationReport):
        failed = [f"{name} batch {c.batch}: max|diff| {c.max_abs_diff:.3g} (<= {MAX_ABS_DIFF}), "
                  f"min cosine {c.min_cosine:.6f} (>= {MIN_COSINE})"
                  for name, checks in report.towers.items() for c in checks if not c.passed]
        super().__init__("ONNX export failed numerical verification against torch: " + "; ".join(failed))
        self.report = report


def compare(reference: np.ndarray, candidate: np.ndarray, batch: int,
            max_abs: float = MAX_ABS_DIFF, min_cos: float = MIN_COSINE) -> TowerCheck:
    ref = reference.reshape(reference.shape[0], -1).astype(np.float64)
    got = candidate.reshape(candidate.shape[0], -1).astype(np.float64)
    diff = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    denom = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cos = np.sum(ref * got, axis=1) / np.maximum(denom, 1e-30)
    min_cosine = float(np.min(cos))
    return TowerCheck(batch=batch, max_abs_diff=diff, min_cosine=min_cosine,
                      passed=diff <= max_abs and min_cosine >= min_cos)


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def verification_inputs(model: LoadedModel, batch: int, seed: int = 1234) -> dict[str, torch.Tensor]:
    """Fixed inputs: seeded pixel tensors (in the normalised range) and real tokenized strings."""
    spec = model.spec
    gen = torch.Generator().manual_seed(seed + batch)
    size = spec.preprocess.image_size
    mean = torch.tensor(spec.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.preprocess.std).view(1, 3, 1, 1)
    pixels = (torch.rand(batch, 3, size, size, generator=gen) - mean) / std
    texts = [VERIFY_TEXTS[i % len(VERIFY_TEXTS)] for i in range(batch)]
    return {"pixels": pixels, "ids": open_clip_tokenize(spec, texts)}


def verify(model: LoadedModel, onnx_paths: dict[str, Path], batches: tuple[int, ...] = (1, 7)) -> VerificationReport:
    image, text, heads = model.towers()
    sessions = {name: _session(p) for name, p in onnx_paths.items()}
    towers: dict[str, list[TowerCheck]] = {name: [] for name in sessions}
    for b in batches:
        inp = verification_inputs(model, b)
        with torch.no_grad():
            img_ref = image(inp["pixels"])
            txt_ref = text(inp["ids"])
            head_ref = heads(img_ref) if contract.ATTRIBUTE_HEADS in sessions else ()
        img = sessions[contract.IMAGE_ENCODER].run([contract.EMBEDDING], {contract.PIXEL_VALUES: inp["pixels"].numpy()})[0]
        towers[contract.IMAGE_ENCODER].append(compare(img_ref.numpy(), img, b))
        txt = sessions[contract.TEXT_ENCODER].run([contract.EMBEDDING], {contract.INPUT_IDS: inp["ids"].numpy()})[0]
        towers[contract.TEXT_ENCODER].append(compare(txt_ref.numpy(), txt, b))
        if contract.ATTRIBUTE_HEADS in sessions:
            outs = sessions[contract.ATTRIBUTE_HEADS].run(None, {contract.EMBEDDING: img_ref.numpy()})
            ref = np.concatenate([h.numpy() for h in head_ref], axis=1)
            towers[contract.ATTRIBUTE_HEADS].append(compare(ref, np.concatenate(outs, axis=1), b))
    report = VerificationReport(towers=towers)
    if not report.passed:
        raise VerificationError(report)
    return report
