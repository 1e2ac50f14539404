"""Attribute heads: their loss (joint mode adds it to the contrastive loss) and fitting them alone
on frozen embeddings (frozen mode).

Separate from the loop: frozen-mode fitting is a small training loop of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from lenscope.export.model import LoadedModel
from lenscope.export.training.config import TrainConfig
from lenscope.export.training.monitor import head_accuracy

# after lenscope.export.model, which silences torchvision's import warning
from open_clip_train.scheduler import cosine_lr  # noqa: E402


def fit_heads(model: LoadedModel, emb: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig,
              val: tuple[torch.Tensor, torch.Tensor] | None, tick: Callable[..., None]) -> dict[str, Any]:
    """Train only the heads on fixed embeddings; the CLIP weights are never touched."""
    heads = model.heads
    for p in heads.parameters():
        p.requires_grad = True
    heads.train()
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.heads_lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(emb) / cfg.heads_batch_size)
    sched = cosine_lr(opt, cfg.heads_lr, 0, cfg.heads_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed + 17)
    step, losses = 0, []
    for _ in range(cfg.heads_epochs):
        order = torch.randperm(len(emb), generator=gen)
        total = 0.0
        for i in range(0, len(emb), cfg.heads_batch_size):
            idx = order[i:i + cfg.heads_batch_size]
            sched(step)
            loss = attribute_loss(heads, emb[idx], targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total += float(loss.detach()) * len(idx)
        losses.append(round(total / len(emb), 5))
        tick(status=f"loss {losses[-1]:.3f}")
    heads.eval()
    result: dict[str, Any] = {"epoch_losses": losses}
    if val is not None:
        result["val_accuracy"] = head_accuracy(model, *val)
    return result


def attribute_loss(heads, emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = heads.logits(emb)
    parts = [F.cross_entropy(logits[name].float(), targets[:, j], ignore_index=-100)
             for j, name in enumerate(heads.names) if (targets[:, j] >= 0).any()]
    return torch.stack(parts).mean() if parts else emb.sum() * 0
