"""Judging a run on held-out products: the numbers early stopping follows and the table that decides
whether the checkpoint is written.

Queries come only from held-out products, the products the run never trained on:

- photo -> product: every image of a held-out product other than its main one;
- title -> product: each held-out product's title;

ranked against a gallery of every product's main image (held-out and train alike: a new product is
searched among the whole catalog, and a fine-tune that pulls everything towards its training
products pays for it here). One product is relevant: the query's own (R@1, R@10).

Beside the model: the start model (the same numbers before the first step), a 16x16-thumbnail
cosine for photo queries, and for each head its accuracy against always answering the training
split's most frequent label. ``score`` (the mean of the available R@1/R@10) is what early
stopping follows and what "worse than its start" means.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lenscope.client.eval.thumbnail import LABEL as THUMBNAIL, recall_at
from lenscope.export.training.monitor import embed_images, embed_texts

METRICS = ("photo R@1", "photo R@10", "title R@1", "title R@10")


@torch.no_grad()
def evaluate(clip: torch.nn.Module, val: dict[str, Any], device: torch.device) -> dict[str, float]:
    """Held-out R@1/R@10 of photo and title queries, and their mean ``score``."""
    was_training = clip.training
    held = embed_images(clip, val["image"], device)
    gallery = torch.cat([held, embed_images(clip, val["train_image"], device)]).numpy()
    out: dict[str, float] = {}
    if len(val["photo"]):
        photos = embed_images(clip, val["photo"], device).numpy()
        out.update({f"photo {k}": v for k, v in recall_at(photos, gallery, val["photo_product"].numpy()).items()})
    titles = embed_texts(clip, val["tokens"], device).numpy()
    out.update({f"title {k}": v for k, v in recall_at(titles, gallery, np.arange(len(titles))).items()})
    out["score"] = round(float(np.mean([out[m] for m in METRICS if m in out])), 4)
    clip.train(was_training)
    return out


def thumbnail_baseline(val: dict[str, Any]) -> dict[str, float]:
    th = val["thumbs"]
    if not len(th["photo"]):
        return {}
    return {f"photo {k}": v for k, v in recall_at(th["photo"], th["gallery"], val["photo_product"].numpy()).items()}


def majority_accuracy(train_targets: torch.Tensor, val_targets: torch.Tensor, names: list[str]) -> dict[str, float]:
    """Per attribute: the accuracy of always answering the train split's most frequent label."""
    out = {}
    for j, name in enumerate(names):
        known_train = train_targets[:, j][train_targets[:, j] >= 0]
        known_val = val_targets[:, j][val_targets[:, j] >= 0]
        if len(known_train) and len(known_val):
            top = int(torch.bincount(known_train).argmax())
            out[name] = round(float((known_val == top).float().mean()), 4)
    return out


def worse_heads(heads: dict[str, dict[str, Any]] | None) -> list[str]:
    """Heads kept on the start's label set whose held-out accuracy fell by more than one held-out
    product's worth (1/n: smaller moves are within what a handful of products can show)."""
    worse = []
    for name, h in (heads or {}).items():
        if "start" in h and "fine_tuned" in h and h["fine_tuned"] < h["start"] - 1.0 / max(int(h["n"]), 1) - 1e-9:
            worse.append(f"head {name} accuracy {h['fine_tuned']:.3f} is below its start's {h['start']:.3f} "
                         f"({h['n']} held-out products)")
    return worse


def decide(start: dict[str, float], best: dict[str, float], force: bool,
           heads: dict[str, dict[str, Any]] | None = None) -> tuple[bool, str]:
    """(write?, why): a fine-tune that scores below its start on held-out products, or whose attribute
    head (same label set as the start's) lost accuracy there, is kept only with force."""
    worse = worse_heads(heads)
    if best["score"] >= start["score"] and not worse:
        gain = "no gain" if best["score"] == start["score"] else f"+{best['score'] - start['score']:.4f}"
        return True, f"held-out score {best['score']:.4f} vs start {start['score']:.4f} ({gain})"
    if best["score"] < start["score"]:
        worse.insert(0, f"held-out score {best['score']:.4f} is below its start's {start['score']:.4f}")
    return force, "; ".join(worse) + ("; written anyway (--force)" if force else "")


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(metric, n, start, trained, baseline) rows of the held-out table; "n/a" where a cell has no number."""
    def cell(d: dict | None, key: str, why: str = "-") -> str:
        return f"{d[key]:.3f}" if d and key in d else why

    rows: list[tuple[str, str, str, str, str]] = []
    n = report["queries"]
    for m in METRICS:
        kind = m.split()[0]
        base = cell(report["thumbnail"], m, "n/a") if kind == "photo" else "n/a (text)"
        rows.append((f"{kind}->product {m.split()[1]}", str(n[kind]), cell(report["start"], m),
                     cell(report["fine_tuned"], m), base))
    rows.append(("score (mean)", "", cell(report["start"], "score"), cell(report["fine_tuned"], "score"), ""))
    for name, h in report.get("heads", {}).items():
        trained = cell(h, "fine_tuned") + (f" (start's head; refitted {h['kept_start_head']:.3f})"
                                           if "kept_start_head" in h else "")
        rows.append((f"head {name} acc.", str(h["n"]), cell(h, "start", "n/a (new labels)"), trained,
                     f"{h['majority']:.3f} majority" if "majority" in h else "-"))
    return rows


def baseline_name() -> str:
    return THUMBNAIL
