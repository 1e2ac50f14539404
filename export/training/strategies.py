"""Freezing strategies (which parameters train) and the optimizer's weight-decay groups.

Separate from the loop: both decide what the optimizer may touch, and nothing else.
"""

from __future__ import annotations

import torch

from lenscope.export.training.config import TrainConfig


def apply_strategy(clip: torch.nn.Module, cfg: TrainConfig) -> None:
    """Freeze with open_clip's own lock methods. Their last groups are the final norm+projection,
    so N blocks = N + 1 groups."""
    for p in clip.parameters():
        p.requires_grad = True
    if cfg.strategy == "frozen_text":
        clip.lock_text_tower(unlocked_layers=0)
    elif cfg.strategy == "frozen_image":
        clip.lock_image_tower(unlocked_groups=0)
    elif cfg.strategy == "last_n":
        clip.lock_image_tower(unlocked_groups=cfg.last_n_blocks + 1)
        clip.lock_text_tower(unlocked_layers=cfg.last_n_blocks + 1)
    clip.logit_scale.requires_grad = True


def param_groups(named: list[tuple[str, torch.nn.Parameter]], wd: float) -> list[dict]:
    """open_clip_train's rule: no weight decay on gains, biases, norms and logit_scale."""
    def exclude(n: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    trainable = [(n, p) for n, p in named if p.requires_grad]
    return [
        {"params": [p for n, p in trainable if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in trainable if not exclude(n, p)], "weight_decay": wd},
    ]
