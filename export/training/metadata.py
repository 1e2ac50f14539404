"""What a run records: the held-out table's numbers and the checkpoint's ``meta`` (what was trained
on what, how, the losses, label sets, schedule and timings). The export manifest carries the
held-out table on (``extras.training``).

Separate from the loop: it reads the run's results and never touches the weights.
"""

from __future__ import annotations

import platform
import time
from typing import Any

import open_clip
import torch

from lenscope.client.core.modelspec import ModelSpec
from lenscope.export.model import LoadedModel, sha256_file
from lenscope.export.training.config import TRAINER_VERSION, TrainConfig
from lenscope.export.training.data import TrainData, Views
from lenscope.export.training.heldout import majority_accuracy, thumbnail_baseline


def held_out_report(data: TrainData, views: Views, loop: Any, start: dict[str, Any] | None,
                     heads_info: dict[str, Any]) -> dict[str, Any] | None:
    """The held-out table's numbers (see ``heldout``); None when nothing was held out or evaluation is off."""
    if start is None:
        return None
    fine = loop.best if loop.best is not None else {"step": 0, **start["retrieval"]}
    report: dict[str, Any] = {
        "split": data.split_source, "products": len(data.val_rows),
        "gallery": len(data.val_rows) + len(data.train_rows),
        "queries": {"photo": len(views.val["photo"]), "title": len(data.val_rows)},
        "start": start["retrieval"], "fine_tuned": {k: v for k, v in fine.items() if k != "step"},
        "best_step": fine["step"], "steps_run": loop.step, "stopped": loop.stopped,
        "thumbnail": thumbnail_baseline(views.val), "evaluations": loop.evals,
    }
    accuracy = heads_info.get("val_accuracy", {})
    if data.val_targets is not None and data.targets is not None:
        names = [a.name for a in data.labels.attributes]
        majority = majority_accuracy(data.targets, data.val_targets, names)
        report["heads"] = {}
        for j, name in enumerate(names):
            n = int((data.val_targets[:, j] >= 0).sum())
            if not n:
                continue
            h: dict[str, Any] = {"n": n}
            if name in accuracy:
                h["fine_tuned"] = accuracy[name]
            if name in heads_info.get("kept_start_heads", {}):
                h["kept_start_head"] = heads_info["kept_start_heads"][name]["refit"]  # the refitted one's accuracy
            if name in start.get("heads", {}):
                h["start"] = start["heads"][name]
            if name in majority:
                h["majority"] = majority[name]
            report["heads"][name] = h
    return report


def run_metadata(spec: ModelSpec, cfg: TrainConfig, model: LoadedModel, data: TrainData, views: Views, loop: Any,
              heads_info: dict[str, Any], device: torch.device, timing: dict[str, float],
              t_start: float) -> dict[str, Any]:
    """The checkpoint's ``meta``: what was trained on what, how, the losses and the timings."""
    train_rows, n_photos, train_s = data.train_rows, views.n_photos, timing["train_s"]
    return {
        "trainer": TRAINER_VERSION,
        "spec": spec.name,
        "catalog": str(data.cat.path),
        "catalog_sha256": sha256_file(data.cat.path),
        "init_checkpoint": None if model.checkpoint is None else str(model.checkpoint),
        "init_sha256": model.checkpoint_sha256,
        "config": cfg.model_dump(mode="json"),
        "strategy": cfg.strategy,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "n_train": len(train_rows),
        "n_val": len(data.val_rows),
        "second_view": {"photos": n_photos, "augmented_copies": len(train_rows) - n_photos} if cfg.two_view else None,
        "steps": len(loop.step_losses),
        "batch_size": loop.batch,
        "losses": {"epoch": loop.epochs, "step": loop.step_losses},
        "heads": heads_info,
        "labels": {"source": data.labels.source, "attributes": {a.name: list(a.labels) for a in data.labels.attributes}},
        "notes": data.notes,
        "schedule": {"total_steps": loop.total_steps, "steps_per_epoch": loop.steps_per_epoch,
                     "eval_every": loop.eval_every, "stopped": loop.stopped},
        "timing": {
            "preload_s": round(timing["preload_s"], 2),
            "train_s": round(train_s, 2),
            "s_per_epoch": round(train_s / max(len(loop.epochs), 1), 2),
            "heads_s": round(timing["heads_s"], 2),
            "total_s": round(time.perf_counter() - t_start, 2),
        },
        "environment": {"device": str(device), "threads": torch.get_num_threads(),
                        "precision": cfg.precision,
                        "torch": str(torch.__version__), "open_clip": str(open_clip.__version__),
                        "python": platform.python_version(), "machine": platform.machine()},
    }
