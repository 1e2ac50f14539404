"""Watching a run: the progress bar, embeddings (for the held-out evaluation in ``heldout``), head
accuracy and the one-line epoch summary.

Separate from the loop: none of this changes the weights; it only measures and reports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lenscope.export.model import LoadedModel


class Progress:
    """A rich progress bar when enabled, a no-op otherwise (tests, logs)."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"))

    def __enter__(self) -> "Progress":
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.stop()

    def task(self, description: str, total: int) -> Callable[..., None]:
        if not self.bar:
            return lambda advance=1, status="": None
        tid = self.bar.add_task(description, total=total, status="")
        bar = self.bar

        def update(advance: int = 1, status: str = "") -> None:
            bar.update(tid, advance=advance, status=status)

        return update

    def log(self, message: str) -> None:
        if self.bar:
            self.bar.console.log(message)


@torch.no_grad()
def embed_images(clip: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor:
    clip.eval()
    return torch.cat([clip.encode_image(x[i:i + batch].to(device), normalize=True).float().cpu()
                      for i in range(0, len(x), batch)])


@torch.no_grad()
def embed_texts(clip: torch.nn.Module, tokens: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    clip.eval()
    return torch.cat([clip.encode_text(tokens[i:i + batch].to(device), normalize=True).float().cpu()
                      for i in range(0, len(tokens), batch)])


@torch.no_grad()
def head_accuracy(model: LoadedModel, emb: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    logits = model.heads.logits(emb)
    out = {}
    for j, name in enumerate(model.heads.names):
        known = targets[:, j] >= 0
        if known.any():
            out[name] = round(float((logits[name][known].argmax(1) == targets[known, j]).float().mean()), 4)
    return out


def describe_epoch(s: dict[str, Any]) -> str:
    val = s.get("held_out", {})
    extra = ("held-out " + "  ".join(f"{k} {v:.3f}" for k, v in val.items())) if val else ""
    losses = " ".join(f"{k} {s[k]:.3f}" for k in ("loss", "clip", "image_image", "attributes") if k in s)
    return f"epoch {s['epoch']}: {losses}  scale {s['logit_scale']:.1f}  {s['seconds']:.1f}s  {extra}"
