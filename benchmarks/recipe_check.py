"""Does a rerun of the shipped recipe reproduce the shipped model's figures? (issue 15)

    python benchmarks/recipe_check.py --catalog .lenscope/train-catalog/catalog.jsonl \
        export/weights/lenscope-tiny.pt .lenscope/train/model.pt

Measures each checkpoint the same way, in-process (torch, the serving preprocessing), on the bundled
catalog (``generate_catalog(out, 6000, seed=0)``: 4,500 train / 600 val / 900 test products):

- ``val`` and ``test``: title -> image and user photo -> catalog image R@1 / R@10 among that split's
  main images, the one relevant image being the product's own (the per-epoch ``val`` numbers the
  shipped checkpoint's training metadata records, and the README's "900 unseen test products" ones);
- ``held-out score``: what `lenscope model train` judges a run by (``export.training.heldout``:
  val photos and titles ranked among all 5,100 train + val main images, ties count as misses);
- ``heads``: attribute head accuracy on the val main images (the metadata's ``val_accuracy``).

Prints one Markdown table, a column per checkpoint, and the difference of the last from the first.
Torch runs on the CPU with the threads it is given; nothing here is timed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _recall(queries: torch.Tensor, keys: torch.Tensor, target: torch.Tensor, ks=(1, 10)) -> dict[str, float]:
    """The training monitor's recall (the shipped metadata's numbers): rank = keys scoring above the target."""
    sims = queries @ keys.T
    rank = (sims > sims[torch.arange(len(queries)), target].unsqueeze(1)).sum(dim=1)
    return {f"R@{k}": round(float((rank < k).float().mean()), 4) for k in ks}


def measure(checkpoint: Path, data: dict, spec) -> dict[str, float]:
    from lenscope.export.model import build_model
    from lenscope.export.training.heldout import evaluate
    from lenscope.export.training.monitor import embed_images, embed_texts, head_accuracy

    model = build_model(spec.model_copy(update={"checkpoint": str(checkpoint.resolve())}))
    clip, dev = model.clip.eval(), torch.device("cpu")
    out: dict[str, float] = {}
    for split in ("val", "test"):
        d = data[split]
        img = embed_images(clip, d["image"], dev)
        txt = embed_texts(clip, d["tokens"], dev)
        photo = embed_images(clip, d["photo"], dev)
        out.update({f"{split} title->image {k}": v for k, v in _recall(txt, img, torch.arange(len(txt))).items()})
        out.update({f"{split} photo->image {k}": v for k, v in _recall(photo, img, d["photo_product"]).items()})
        if split == "val":
            heads = head_accuracy(model, img, d["targets"])
            out.update({f"val head {name} acc.": v for name, v in heads.items()})
    held = evaluate(clip, data["held_out"], dev)
    out.update({f"held-out {k}": v for k, v in held.items()})
    return out


def load(catalog: Path, spec) -> dict:
    import open_clip

    from lenscope.client.catalog.reader import read_catalog
    from lenscope.export.training.config import TrainConfig
    from lenscope.export.training.data import load_images
    from lenscope.export.training.labels import attribute_targets

    cat = read_catalog(catalog)
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=spec.context_length)
    cfg = TrainConfig(precision="fp32")
    data: dict = {}
    for split in ("val", "test", "train"):
        rows = cat.split(split)
        images = load_images(cat, [(r, 0) for r in rows], spec, cfg, lambda: None).pixels
        if split == "train":
            data["train_image"] = images
            continue
        items = [(r, k) for r in rows for k in range(1, len(r.images))]
        index = {r.product_id: i for i, r in enumerate(rows)}
        data[split] = {"image": images, "tokens": tok([r.title for r in rows]),
                       "photo": load_images(cat, items, spec, cfg, lambda: None).pixels,
                       "photo_product": torch.tensor([index[r.product_id] for r, _ in items], dtype=torch.long),
                       "targets": attribute_targets(spec.attributes, rows)}
    v = data["val"]
    data["held_out"] = {"image": v["image"], "train_image": data.pop("train_image"), "photo": v["photo"],
                        "photo_product": v["photo_product"], "tokens": v["tokens"]}
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog", type=Path, required=True, help="the bundled catalog (generate_catalog 6000, seed 0)")
    ap.add_argument("checkpoints", type=Path, nargs="+", help="the shipped checkpoint first, then reruns")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from lenscope.client.core.modelspec import load_spec
    from lenscope.export.pipeline import DEFAULT_SPEC

    spec = load_spec(DEFAULT_SPEC).model_copy(update={"checkpoint": None})
    data = load(args.catalog, spec)
    results = [measure(c, data, spec) for c in args.checkpoints]
    names = [c.name if c.name != "model.pt" else str(c) for c in args.checkpoints]
    print("| figure | " + " | ".join(names) + (" | last - first |" if len(results) > 1 else " |"))
    print("|---|" + "---|" * (len(results) + (len(results) > 1)))
    for key in results[0]:
        vals = [r.get(key, float("nan")) for r in results]
        diff = f" {vals[-1] - vals[0]:+.4f} |" if len(results) > 1 else ""
        print(f"| {key} | " + " | ".join(f"{v:.4f}" for v in vals) + " |" + diff)
    print(f"\nval: {len(data['val']['tokens'])} products, {len(data['val']['photo'])} photos; test: "
          f"{len(data['test']['tokens'])} products, {len(data['test']['photo'])} photos; held-out gallery "
          f"{len(data['held_out']['image']) + len(data['held_out']['train_image'])} main images", flush=True)
    return int(not np.isfinite([v for r in results for v in r.values()]).all())


if __name__ == "__main__":
    raise SystemExit(main())
