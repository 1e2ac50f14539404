"""Relevance benchmark: zero-shot vs fine-tuned, heads frozen vs joint, ranking variants, export fidelity.

One command, from a fresh checkout (nothing is downloaded; everything is generated from seeds)::

    python benchmarks/relevance.py                      # data -> train -> evaluate -> report
    python benchmarks/relevance.py --stages eval,report # reuse trained checkpoints in --workdir

Stages (each one caches its outputs under ``--workdir`` and is skipped when they exist with the
same configuration):

``data``
    the bundled catalog (``generate_catalog(out, 6000, seed=0)``: what the shipped default was
    trained on) and a generic caption corpus from a *different* generator
    (``generate_caption_corpus``: toy objects in scenes, "a photo of a red star on a beach").
``train``
    ``zero_shot``: lenscope-tiny pretrained from its seeded init on the caption corpus only
    (heads none). Then, each from that checkpoint on the catalog's train split with the same short
    budget: ``ft_full`` (heads trained afterwards on frozen embeddings: mode (a)),
    ``ft_frozen_text`` (LiT-style, text tower locked), ``ft_last_n`` (last block of each tower),
    ``ft_joint`` (full fine-tune with joint multi-task attribute loss: mode (b)). The shipped
    default (``export/weights/lenscope-tiny.pt``: 28 epochs from scratch + frozen heads) is
    evaluated as is.
``fit``
    the shipped default's calibration + fusion weights fitted on the val split through the live
    stack (``lenscope rerank fit``), written to ``export/weights/lenscope-tiny.{fusion,calibration}.json``
    (deterministic: a rerun rewrites the same files) + ``relevance_fit.json`` in the reports folder.
``eval``
    every model through the live stack (``lenscope.client.eval.harness``: export -> tritonserver ->
    index of the test split -> SearchEngine), with calibration + fusion fitted on the val split
    through the same stack (the default uses its shipped, val-fitted files). Export fidelity
    (Triton vs torch Recall@10) is checked for every model.
``foreign``
    the shipped default on two catalogs its fit never saw (``foreign_catalog.py``): the vendored
    real-products photos and a procedural catalog of another seed and size, indexed with the
    build's own self-checked fit; per query type the served ranking next to each raw signal, a
    16x16-thumbnail cosine and random, with compositional photo + another variant's colour queries
    -> ``relevance_foreign.md`` / ``.json``. ``--stages foreign`` runs it alone (~5 min).
``report``
    ``relevance.md`` / ``.json`` + PNG plots in the reports folder: ``.lenscope/bench/reports/``
    (git-ignored), or the tracked ``benchmarks/reports/`` with ``--publish``.

The budgets are deliberately short so the whole run fits a shared 2-core CPU box (stated in the
report with the measured times); with a GPU, raise ``--pretrain-epochs`` / ``--finetune-epochs``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reporting  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR = REPO / ".lenscope" / "bench" / "relevance"
SHIPPED_SPEC = REPO / "export" / "specs" / "lenscope-tiny.json"
SHIPPED_CHECKPOINT = REPO / "export" / "weights" / "lenscope-tiny.pt"
SHIPPED_FUSION = REPO / "export" / "weights" / "lenscope-tiny.fusion.json"
SHIPPED_CALIBRATION = REPO / "export" / "weights" / "lenscope-tiny.calibration.json"

CATALOG_PRODUCTS = 6000
CATALOG_SEED = 0


@dataclass(frozen=True)
class Budget:
    corpus_images: int = 12000
    pretrain_epochs: int = 6
    finetune_epochs: int = 4
    threads: int = 2
    seed: int = 0


@dataclass(frozen=True)
class ModelRun:
    """One trained model: how it is made (init, strategy, heads) and what it is for."""

    name: str
    label: str
    init: str | None  # another run's name, or None (seeded init)
    data: str  # "corpus" | "catalog"
    strategy: str = "full"
    heads: str = "none"
    epochs_key: str = "finetune_epochs"
    two_view: bool = True


RUNS: tuple[ModelRun, ...] = (
    ModelRun("zero_shot", "zero-shot (caption-corpus pretrain)", None, "corpus", heads="none",
             epochs_key="pretrain_epochs", two_view=False),
    ModelRun("ft_full", "fine-tuned: full (+ heads on frozen embeddings)", "zero_shot", "catalog", "full", "frozen"),
    ModelRun("ft_frozen_text", "fine-tuned: frozen text tower (LiT-style)", "zero_shot", "catalog", "frozen_text"),
    ModelRun("ft_last_n", "fine-tuned: last block of each tower", "zero_shot", "catalog", "last_n"),
    ModelRun("ft_joint", "fine-tuned: full + joint multi-task heads", "zero_shot", "catalog", "full", "joint"),
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------- data


def stage_data(workdir: Path, budget: Budget, catalog: Path | None) -> dict[str, Path]:
    from lenscope.client.synth.catalog import generate_catalog
    from lenscope.client.synth.corpus import generate_caption_corpus

    out: dict[str, Path] = {}
    if catalog is None:
        catalog = workdir / "catalog" / "catalog.jsonl"
        if not catalog.is_file():
            log(f"generating the bundled catalog ({CATALOG_PRODUCTS} products, seed {CATALOG_SEED}) -> {catalog.parent}")
            generate_catalog(catalog.parent, CATALOG_PRODUCTS, seed=CATALOG_SEED)
    out["catalog"] = catalog
    out["queries"] = catalog.parent / "queries.jsonl"
    corpus_dir = workdir / f"corpus-{budget.corpus_images}"
    corpus = corpus_dir / "corpus.jsonl"
    if not corpus.is_file():
        log(f"generating the caption corpus ({budget.corpus_images} images, seed 0) -> {corpus_dir}")
        generate_caption_corpus(corpus_dir, budget.corpus_images, seed=0)
    out["corpus"] = corpus
    return out


# ------------------------------------------------------------------------------------------ train


def _train_config(run: ModelRun, budget: Budget) -> dict[str, Any]:
    return {"epochs": getattr(budget, run.epochs_key), "strategy": run.strategy, "heads": run.heads,
            "two_view": run.two_view, "seed": budget.seed, "threads": budget.threads, "eval_every": 0,
            "holdout": 0.0}  # fixed budgets, as before: no held-out judging (the harness judges), all of a split-less corpus


def stage_train(workdir: Path, budget: Budget, data: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Train every run whose checkpoint (with the same config) is not cached yet."""
    from lenscope.client.core.modelspec import load_spec
    from lenscope.export.training.config import TrainConfig
    from lenscope.export.training.loop import train

    models = workdir / "models"
    models.mkdir(parents=True, exist_ok=True)
    base = load_spec(SHIPPED_SPEC).model_copy(update={"checkpoint": None})
    results: dict[str, dict[str, Any]] = {}
    for run in RUNS:
        ckpt = models / f"{run.name}.pt"
        side = models / f"{run.name}.json"
        cfg_dict = _train_config(run, budget)
        init = None if run.init is None else models / f"{run.init}.pt"
        data_path = data["corpus"] if run.data == "corpus" else data["catalog"]
        want = {"run": asdict(run), "config": cfg_dict, "data": str(data_path),
                "init": None if init is None else str(init)}
        if ckpt.is_file() and side.is_file():
            cached = json.loads(side.read_text())
            if cached.get("want") == want:
                log(f"train {run.name}: cached ({cached['timing']['total_s']:.0f} s when trained)")
                results[run.name] = cached
                continue
        log(f"train {run.name}: {run.label}; {cfg_dict}")
        t0 = time.perf_counter()
        result = train(base.model_copy(update={"name": f"lenscope-tiny-{run.name.replace('_', '-')}"}), data_path,
                       ckpt, TrainConfig(**cfg_dict), spec_dir=SHIPPED_SPEC.parent, init_checkpoint=init,
                       progress=False)
        wall = time.perf_counter() - t0
        meta = result.meta
        summary = {
            "want": want,
            "timing": {**meta["timing"], "wall_s": round(wall, 1)},
            "steps": meta["steps"],
            "n_train": meta["n_train"],
            "epochs": [{k: v for k, v in e.items()} for e in meta["losses"]["epoch"]],
            "heads": {k: v for k, v in meta["heads"].items() if k != "epoch_losses"},
        }
        side.write_text(json.dumps(summary, indent=1) + "\n")
        log(f"train {run.name}: done in {wall:.0f} s; last epoch {summary['epochs'][-1] if summary['epochs'] else None}")
        results[run.name] = summary
    return results


# -------------------------------------------------------------------------------------------- fit


def _sha256(*paths: Path) -> str | None:
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        if not p.is_file():
            return None
        h.update(p.read_bytes())
    return h.hexdigest()


def stage_fit(workdir: Path, data: dict[str, Path], reports: Path) -> dict[str, Any]:
    """Fit the shipped default's calibration + fusion on the val split through the live stack
    (what `lenscope rerank fit` does) and write them next to its checkpoint; deterministic, so a
    rerun rewrites the same files."""
    from lenscope.client.eval.config import EvalConfig
    from lenscope.client.eval.fitting import fit_and_save
    from lenscope.export.pipeline import export_model

    log("fit: the shipped default's calibration + fusion weights on the val split")
    t0 = time.perf_counter()
    config = EvalConfig(catalog=data["catalog"], queries=data["queries"], workdir=workdir / "fit-default",
                        spec=SHIPPED_SPEC, split="val", fidelity=False, exporter=export_model)
    summary = fit_and_save(config, SHIPPED_FUSION, SHIPPED_CALIBRATION, log=lambda m: log(f"  [fit] {m}"))
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    summary["command"] = ("lenscope rerank fit --catalog <catalog> --spec export/specs/lenscope-tiny.json "
                          "--split val --out export/weights/lenscope-tiny.fusion.json "
                          "--calibration-out export/weights/lenscope-tiny.calibration.json")
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "relevance_fit.json").write_text(_rel(json.dumps(summary, indent=2, default=str)) + "\n")
    log(f"fit: done in {summary['wall_s']:.0f} s: relevant grade >= {summary['min_grade']}, {summary['objective']}")
    return summary


# ------------------------------------------------------------------------------------------- eval


def _spec_for(run_name: str, checkpoint: Path, workdir: Path) -> Path:
    from lenscope.client.core.modelspec import load_spec

    spec = load_spec(SHIPPED_SPEC).model_copy(update={"checkpoint": str(checkpoint.resolve()),
                                                       "name": f"lenscope-tiny-{run_name.replace('_', '-')}"})
    path = workdir / "specs" / f"{run_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec.model_dump_json(indent=2) + "\n")
    return path


def stage_eval(workdir: Path, data: dict[str, Path], names: list[str]) -> dict[str, dict[str, Any]]:
    """Every model through the live stack; per-model reports under <workdir>/eval/<name>/."""
    from lenscope.client.eval.config import EvalConfig
    from lenscope.client.eval.harness import evaluate
    from lenscope.client.eval.report import write_report
    from lenscope.export.fidelity import TORCH_RANKER
    from lenscope.export.pipeline import export_model

    results: dict[str, dict[str, Any]] = {}
    for name in names:
        out = workdir / "eval" / name
        cached = out / "report" / f"{name}.json"
        if name == "default":
            spec, shipped = SHIPPED_SPEC, True
            ckpt = SHIPPED_CHECKPOINT
        else:
            ckpt = workdir / "models" / f"{name}.pt"
            spec, shipped = _spec_for(name, ckpt, workdir), False
        stamp: dict[str, Any] = {"checkpoint_mtime": ckpt.stat().st_mtime, "fusion_mtime": None}
        if shipped:
            stamp = {"checkpoint_mtime": ckpt.stat().st_mtime, "fit_sha256": _sha256(SHIPPED_FUSION, SHIPPED_CALIBRATION)}
        if cached.is_file():
            rep = json.loads(cached.read_text())
            if rep.get("_stamp") == stamp:
                log(f"eval {name}: cached")
                results[name] = rep
                continue
        log(f"eval {name}: {spec}")
        t0 = time.perf_counter()
        config = EvalConfig(catalog=data["catalog"], queries=data["queries"], workdir=out / "work", spec=spec,
                            use_shipped=shipped, fit_split="val", fidelity=True, exporter=export_model,
                            torch_ranker=TORCH_RANKER)
        report = evaluate(config, log=lambda m, n=name: log(f"  [{n}] {m}"))
        report["_stamp"] = stamp
        files = write_report(report, out / "report", name)
        rep = json.loads(files["json"].read_text())
        rep["_stamp"] = stamp
        rep["wall_s"] = round(time.perf_counter() - t0, 1)
        files["json"].write_text(json.dumps(rep, indent=2) + "\n")
        log(f"eval {name}: done in {rep['wall_s']:.0f} s")
        results[name] = rep
    return results


# ----------------------------------------------------------------------------------------- report

TYPES = ("image", "text", "image+text")
TYPE_LABEL = {"image": "photo -> product", "text": "text -> product", "image+text": "photo+text -> product"}
RAW_ANN = {"image": "single:visual", "text": "single:text_image", "image+text": "single:visual"}
MODEL_LABEL = {"default": "shipped default (28 ep from scratch + frozen heads)", **{r.name: r.label for r in RUNS}}


def _m(rep: dict, t: str, variant: str, key: str) -> float | None:
    return rep["metrics"].get(t, {}).get(variant, {}).get(key)


def _rel(text: str) -> str:
    return text.replace(str(REPO) + "/", "")


def _f(x: Any, d: int = 3) -> str:
    return "-" if x is None else f"{x:.{d}f}" if isinstance(x, float) else str(x)


def _pt(x: float | None, d: int = 1) -> str:
    return "-" if x is None else f"{100 * x:+.{d}f}"


def summarise(evals: dict[str, dict], trains: dict[str, dict], budget: Budget, reports: Path,
              wall: dict[str, float]) -> dict[str, Any]:
    """The aggregate numbers (JSON) the Markdown is rendered from."""
    models = {}
    for name, rep in evals.items():
        models[name] = {
            "label": MODEL_LABEL.get(name, name),
            "model_hash": rep["model"]["model_hash"],
            "heads_trained": rep["model"]["heads_trained"],
            "metrics": rep["metrics"],
            "headline": rep["headline"],
            "attributes": rep["attributes"],
            "fidelity": rep["fidelity"],
            "ranking": {k: rep["ranking"][k] for k in ("calibration_source", "weights_source", "weights",
                                                       "weights_no_heads")},
            "eval_wall_s": rep.get("wall_s"),
        }
    out: dict[str, Any] = {"budget": asdict(budget), "training": trains, "models": models,
                           "environment": {"python": platform.python_version(), "machine": platform.machine(),
                                           "cpus": os.cpu_count()}, "stage_wall_s": wall}
    head: dict[str, Any] = {}
    zs, df = evals.get("zero_shot"), evals.get("default")
    fts = {n: evals[n] for n in ("ft_full", "ft_frozen_text", "ft_last_n") if n in evals}
    if zs and (fts or df):
        best_ft = max(fts, key=lambda n: np.mean([_m(evals[n], t, RAW_ANN[t], "R@10") or 0 for t in TYPES])) \
            if fts else None
        head["finetuned_vs_zeroshot"] = {t: {
            "zero_shot_R@10": _m(zs, t, RAW_ANN[t], "R@10"),
            "best_short_finetune": best_ft,
            "best_short_finetune_R@10": _m(evals[best_ft], t, RAW_ANN[t], "R@10") if best_ft else None,
            "default_R@10": _m(df, t, RAW_ANN[t], "R@10") if df else None,
            "zero_shot_fused_nDCG@10": _m(zs, t, "fused", "nDCG@10"),
            "best_short_finetune_fused_nDCG@10": _m(evals[best_ft], t, "fused", "nDCG@10") if best_ft else None,
            "default_fused_nDCG@10": _m(df, t, "fused", "nDCG@10") if df else None,
        } for t in TYPES}
    if df:
        h = df["headline"]
        head["heads_cost_default"] = {t: {
            "fused_R@10_heads_on": _m(df, t, "fused", "R@10"),
            "fused_R@10_heads_off": _m(df, t, "fused_no_heads", "R@10"),
            "on_minus_off_points": h[t].get("heads_on_minus_off_R@10_points"),
            "retrieval_R@10_change_points": 0.0,
        } for t in TYPES if t in h}
        head["fused_vs_best_single_default"] = {t: {
            "best_single": h[t]["best_single"]["variant"], "best_single_nDCG@10": h[t]["best_single"]["nDCG@10"],
            "fused_nDCG@10": h[t]["fused"]["nDCG@10"], "points": h[t].get("fused_minus_best_single_ndcg10_points"),
        } for t in TYPES if t in h}
        head["fidelity_default"] = df["fidelity"]
    if "ft_full" in evals and "ft_joint" in evals:
        a, b = evals["ft_full"], evals["ft_joint"]
        head["heads_frozen_vs_joint"] = {
            "R@10_raw_ann": {t: {"frozen_heads (a)": _m(a, t, RAW_ANN[t], "R@10"),
                                 "joint (b)": _m(b, t, RAW_ANN[t], "R@10")} for t in TYPES},
            "attributes": {"frozen_heads (a)": a["attributes"], "joint (b)": b["attributes"]},
        }
    out["headline"] = head
    return out


def _bar_plot(evals: dict[str, dict], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(len(names), 1)
    for ax, (variant_of, metric, title) in zip(axes, ((RAW_ANN, "R@10", "raw ANN Recall@10"),
                                                      ({t: "fused" for t in TYPES}, "nDCG@10", "fused nDCG@10"))):
        for i, n in enumerate(names):
            ys = [_m(evals[n], t, variant_of[t], metric) or 0.0 for t in TYPES]
            ax.bar(np.arange(len(TYPES)) + i * width, ys, width, label=n)
        ax.set_xticks(np.arange(len(TYPES)) + width * (len(names) - 1) / 2)
        ax.set_xticklabels([TYPE_LABEL[t] for t in TYPES], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{title} (test split)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(summary: dict[str, Any], evals: dict[str, dict], budget: Budget, reports: Path,
           plots: dict[str, str]) -> str:
    from lenscope.client.eval.report import metrics_markdown

    h = summary["headline"]
    tr = summary["training"]
    L = ["# Relevance: zero-shot vs fine-tuned, attribute heads, calibrated fusion, export fidelity", "",
         "Generated by `python benchmarks/relevance.py` (data -> train -> eval through the live stack -> this "
         "report). Catalog: the bundled one, `generate_catalog(out, 6000, seed=0)` (4,500 train / 600 val / 900 "
         "test products); every number below is on the **test split** (900 products indexed through Triton, "
         "2,700 queries: 900 user photos, 900 texts, 900 photo+text), with calibration and fusion fitted on the "
         "**val split** only. Definitions (`client/ranking/metrics.py`): R@K = share of queries with a relevant product "
         "in the top K, relevant = the query's top grade (the photographed product; for text, every product "
         "matching all the text names); nDCG@10 graded (gain 2^g - 1, ideal from all judged products); MRR@100.",
         ""]
    # ------------------------------------------------------------------ headline
    L += ["## Headline", ""]
    if "finetuned_vs_zeroshot" in h:
        L += ["| query type | zero-shot R@10 | best short fine-tune R@10 | shipped default R@10 | "
              "default - zero-shot (pt) | zero-shot fused nDCG@10 | default fused nDCG@10 |", "|---|---|---|---|---|---|---|"]
        for t, d in h["finetuned_vs_zeroshot"].items():
            diff = None if d["default_R@10"] is None else d["default_R@10"] - d["zero_shot_R@10"]
            L.append(f"| {TYPE_LABEL[t]} | {_f(d['zero_shot_R@10'])} | {_f(d['best_short_finetune_R@10'])} "
                     f"({d['best_short_finetune']}) | {_f(d['default_R@10'])} | {_pt(diff)} | "
                     f"{_f(d['zero_shot_fused_nDCG@10'])} | {_f(d['default_fused_nDCG@10'])} |")
        L.append("")
    if "fused_vs_best_single_default" in h:
        L += ["Shipped default, ranking: fused (val-fitted calibration + weights, heads on) vs the best single "
              "signal, and what its attribute heads cost:", "",
              "| query type | best single signal nDCG@10 | fused nDCG@10 | fused - best single (pt) | "
              "fused R@10 heads on | heads off | heads cost (pt) |", "|---|---|---|---|---|---|---|"]
        for t, d in h["fused_vs_best_single_default"].items():
            hc = h["heads_cost_default"].get(t, {})
            cost = hc.get("on_minus_off_points")
            L.append(f"| {TYPE_LABEL[t]} | {_f(d['best_single_nDCG@10'])} ({d['best_single']}) | "
                     f"{_f(d['fused_nDCG@10'])} | {_f(d['points'], 2)} | {_f(hc.get('fused_R@10_heads_on'))} | "
                     f"{_f(hc.get('fused_R@10_heads_off'))} | {_f(None if cost is None else -cost, 2)} |")
        L += ["", "The default's heads are trained on frozen embeddings (mode (a)), so embedding retrieval "
              "(raw ANN) is bit-for-bit the same with and without them (0.0 pt by construction; "
              "`tests/export/test_train.py::test_heads_on_frozen_embeddings_leave_clip_bit_identical`); "
              "\"heads cost\" above is the fused ranking with the attribute signal at its fitted weight vs at 0 "
              "(negative = the heads help).", ""]
        im = evals["default"]["metrics"].get("image", {})
        if im.get("fused") and im.get(RAW_ANN["image"]):
            L += [f"The fused ranking is fitted for graded nDCG: for photo queries it lifts nDCG@10 and the share of "
                  f"same category+colour products in the top 10 (Rfrac@10 {im[RAW_ANN['image']]['Rfrac@10']:.3f} -> "
                  f"{im['fused']['Rfrac@10']:.3f}) at a small cost in exact-product recall (R@10 "
                  f"{im[RAW_ANN['image']]['R@10']:.3f} -> {im['fused']['R@10']:.3f}, R@1 "
                  f"{im[RAW_ANN['image']]['R@1']:.3f} -> {im['fused']['R@1']:.3f}).", ""]
    f = h.get("fidelity_default")
    if f and f.get("checked"):
        L += [f"Export fidelity (default): Recall@10 through Triton (ONNX) vs torch in-process, tolerance "
              f"{f['tolerance_points']} pt: **{'OK' if f['ok'] else 'FAILED'}** (" + "; ".join(
                  f"{TYPE_LABEL[t]} {d['triton_R@10']:.4f} vs {d['torch_R@10']:.4f}, {d['diff_points']:+.2f} pt"
                  + ("" if d.get("in_verdict", True) else " (information only)")
                  for t, d in f["types"].items()) + f"). The verdict covers {f.get('note', 'every query type')}.", ""]
    # ------------------------------------------------------------------ zero-shot vs fine-tuned
    L += ["## Zero-shot vs fine-tuned", "",
          f"Budgets (shared 2-core CPU box, other jobs running): the zero-shot baseline is lenscope-tiny "
          f"pretrained from its seeded init on {budget.corpus_images:,} images of the generic caption corpus "
          f"(`generate_caption_corpus`: toy objects in scenes, a different generator and vocabulary) for "
          f"{budget.pretrain_epochs} epochs, image-text loss only; each fine-tune starts from it and trains "
          f"{budget.finetune_epochs} epochs on the catalog's train split (two views, the shipped recipe's "
          f"settings). The shipped default trained 28 epochs from scratch.", "",
          "| model | train wall (s) | photo R@1 | photo R@10 | text R@1 | text R@10 | photo+text R@10 | "
          "photo nDCG@10 (fused) | text nDCG@10 (fused) | photo+text nDCG@10 (fused) | fidelity |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = [n for n in ("zero_shot", "ft_full", "ft_frozen_text", "ft_last_n", "ft_joint", "default") if n in evals]
    for n in order:
        rep = evals[n]
        wall = tr.get(n, {}).get("timing", {}).get("wall_s")
        fid = rep["fidelity"]
        L.append(f"| {MODEL_LABEL.get(n, n)} | {_f(wall, 0) if wall else '-'} | "
                 f"{_f(_m(rep, 'image', RAW_ANN['image'], 'R@1'))} | {_f(_m(rep, 'image', RAW_ANN['image'], 'R@10'))} | "
                 f"{_f(_m(rep, 'text', RAW_ANN['text'], 'R@1'))} | {_f(_m(rep, 'text', RAW_ANN['text'], 'R@10'))} | "
                 f"{_f(_m(rep, 'image+text', RAW_ANN['image+text'], 'R@10'))} | "
                 f"{_f(_m(rep, 'image', 'fused', 'nDCG@10'))} | {_f(_m(rep, 'text', 'fused', 'nDCG@10'))} | "
                 f"{_f(_m(rep, 'image+text', 'fused', 'nDCG@10'))} | "
                 f"{'OK' if fid.get('ok') else 'FAILED' if fid.get('checked') else '-'} |")
    L += ["", "R@K columns are the raw ANN ranking (one cosine: photo -> catalog image, text -> catalog image); "
          "fused columns use each model's own val-fitted calibration + weights (untrained heads: attribute "
          "weight 0).", ""]
    if "zero_shot_vs" in plots:
        L += [f"![zero-shot vs fine-tuned]({plots['zero_shot_vs']})", ""]
    # ------------------------------------------------------------------ heads
    if "heads_frozen_vs_joint" in h:
        hj = h["heads_frozen_vs_joint"]
        L += ["## Attribute heads: (a) on frozen embeddings vs (b) joint multi-task", "",
              f"Same init (zero-shot), budget ({budget.finetune_epochs} epochs) and seed: (a) `ft_full` trains "
              "CLIP contrastively, then the heads on its frozen embeddings; (b) `ft_joint` adds the attribute "
              "loss (weight 0.1) to the contrastive loss. Accuracy / macro-F1 from the heads' outputs served by "
              "Triton on the test split's catalog images and user photos.", "",
              "| attribute | (a) catalog acc | (a) macro-F1 | (a) photo acc | (a) photo macro-F1 | (b) catalog acc | "
              "(b) macro-F1 | (b) photo acc | (b) photo macro-F1 |", "|---|---|---|---|---|---|---|---|---|"]
        A, B = hj["attributes"]["frozen_heads (a)"], hj["attributes"]["joint (b)"]
        def g(x: dict, part: str, attr: str, k: str) -> str:
            return _f(x.get(part, {}).get(attr, {}).get(k))

        for attr in sorted(A.get("catalog_images", {})):
            L.append(f"| {attr} | {g(A, 'catalog_images', attr, 'accuracy')} | {g(A, 'catalog_images', attr, 'macro_f1')} | "
                     f"{g(A, 'query_photos', attr, 'accuracy')} | {g(A, 'query_photos', attr, 'macro_f1')} | "
                     f"{g(B, 'catalog_images', attr, 'accuracy')} | {g(B, 'catalog_images', attr, 'macro_f1')} | "
                     f"{g(B, 'query_photos', attr, 'accuracy')} | {g(B, 'query_photos', attr, 'macro_f1')} |")
        L += ["", "| query type | raw ANN R@10 (a) | raw ANN R@10 (b) | (b) - (a) (pt) |", "|---|---|---|---|"]
        for t, d in hj["R@10_raw_ann"].items():
            a, b = d["frozen_heads (a)"], d["joint (b)"]
            L.append(f"| {TYPE_LABEL[t]} | {_f(a)} | {_f(b)} | {_pt(None if a is None or b is None else b - a)} |")
        L.append("")
        if "default" in evals:
            da = evals["default"]["attributes"]
            L += ["Shipped default's heads (mode (a), MLP 256) on the test split: " + "; ".join(
                f"{attr} catalog {v['accuracy']:.3f} / F1 {v['macro_f1']:.3f}, photos "
                f"{da['query_photos'].get(attr, {}).get('accuracy', float('nan')):.3f} / F1 "
                f"{da['query_photos'].get(attr, {}).get('macro_f1', float('nan')):.3f}"
                for attr, v in da["catalog_images"].items()) + ".", ""]
    # ------------------------------------------------------------------ default's variants
    if "default" in evals:
        rep = evals["default"]
        L += ["## Shipped default: every ranking variant", "",
              f"Calibration: {_rel(rep['ranking']['calibration_source'])}. "
              f"Fusion: {_rel(rep['ranking']['weights_source'])}.",
              "Variants: `single:<signal>` one raw cosine (`single:visual` / `single:text_image` = the raw ANN "
              "answer); `raw_sum` all similarity signals, raw, equal weights; `calibrated` the same calibrated; "
              "`fused_no_heads` fitted weights, attribute weight 0; `fused` fitted weights (production).", "",
              metrics_markdown(rep["metrics"])]
        if "recall_curves" in plots:
            L += [f"![Recall@K]({plots['recall_curves']})", ""]
        gap = rep["modality_gap"]
        if gap.get("calibration"):
            L += ["## Modality gap (shipped default)", "",
                  "Mean raw cosine of matched (relevant) and unmatched candidates per modality pair in the val-split "
                  "data the calibration was fitted on: within-modality pairs (photo -> catalog image, text -> "
                  "title) score far higher than cross-modal ones (photo -> title, text -> image), for matched and "
                  "unmatched products alike, so a raw 0.5 means different things per pair. After calibration "
                  "every pair's value is P(relevant | score): unmatched candidates land near the same base rate "
                  "whatever the pair.", "",
                  "| pair | raw matched | raw unmatched | gap to photo->image (raw matched) | "
                  "calibrated @ matched mean | calibrated @ unmatched mean |", "|---|---|---|---|---|---|"]
            for pair, g in gap["calibration"].items():
                L.append(f"| {pair} | {_f(g['raw_matched'])} | {_f(g['raw_unmatched'])} | "
                         f"{_f(g.get('gap_to_image_image_raw'))} | {_f(g['calibrated_at_matched_mean'])} | "
                         f"{_f(g['calibrated_at_unmatched_mean'])} |")
            cg = gap["calibration"]
            if {"image_image", "image_title", "text_image", "text_title"} <= set(cg):
                raw_u = [g["raw_unmatched"] for g in cg.values()]
                cal_u = [g["calibrated_at_unmatched_mean"] for g in cg.values()]
                L += ["", "Measured gap, raw: matched photo -> title pairs score "
                      f"{cg['image_image']['raw_matched'] - cg['image_title']['raw_matched']:.3f} below matched "
                      f"photo -> image pairs, matched text -> image pairs "
                      f"{cg['text_title']['raw_matched'] - cg['text_image']['raw_matched']:.3f} below matched "
                      "text -> title pairs; the unmatched means spread over "
                      f"{max(raw_u) - min(raw_u):.3f} across the four pairs. Calibrated, the unmatched means spread "
                      f"over {max(cal_u) - min(cal_u):.3f}, and each pair's value is a probability of relevance "
                      "on one scale (a matched pair's value now reflects how reliable that pair is, not which "
                      "modality it crosses)."]
            L += ["", "On the test split's candidate pools (matched = relevant, unmatched = grade 0):", "",
                  "| pair | raw matched | raw unmatched | calibrated matched | calibrated unmatched |",
                  "|---|---|---|---|---|"]
            for pair, d in gap["candidates"].items():
                L.append(f"| {pair} | " + " | ".join(_f((d.get(k) or {}).get("mean")) for k in (
                    "raw_matched", "raw_unmatched", "calibrated_matched", "calibrated_unmatched")) + " |")
            L.append("")
        if "gap_histograms" in plots:
            L += [f"![modality gap]({plots['gap_histograms']})", ""]
        fit = summary.get("fit_default")
        if fit:
            L += ["## Calibration + fusion fitted on the val split (shipped with the default)", "",
                  f"`{fit['command']}` ({fit.get('wall_s', '-')} s): {fit['queries']} labelled val queries through "
                  "the live stack; calibration per modality pair (Platt) from each pair's own query modality, "
                  "weights by `rerank.learn_weights` logistic regression (pointwise, and pairwise on "
                  "LambdaRank-weighted pairs), relevance threshold and objective chosen by val nDCG@10, then "
                  "polished by coordinate ascent on val nDCG@10. Files: `export/weights/lenscope-tiny.fusion.json`, "
                  "`export/weights/lenscope-tiny.calibration.json`.", "",
                  "Shipped weights: " + ", ".join(f"{k} {v:.3g}" for k, v in fit["weights"].items()
                                                  if k != "schema_version") + ".", "",
                  "| on the val split (nDCG@10) | photo | text | photo+text | mean |", "|---|---|---|---|---|"]
            rows = {**{f"fit: {k}": v for k, v in fit["selection_ndcg10"].items()},
                    **{f"reference: {k}": v for k, v in fit["baseline_ndcg10"].items()}}
            for k, v in rows.items():
                if "error" in v:
                    L.append(f"| {k} | {v['error']} | | | |")
                    continue
                L.append(f"| {k} | {_f(v.get('image'))} | {_f(v.get('text'))} | {_f(v.get('image+text'))} | "
                         f"{_f(v.get('mean'))} |")
            L.append("")
    # ------------------------------------------------------------------ times
    L += ["## Runtimes", "",
          "Training and evaluation shared the 2 cores with other jobs (other workers' test suites, this run's own "
          "fitting), so seconds per epoch vary by 2x between runs of the same size.", ""]
    for n in order:
        t = tr.get(n, {}).get("timing")
        ev = evals[n].get("wall_s")
        if t:
            L.append(f"- {n}: training {t['wall_s']:.0f} s ({t['s_per_epoch']:.0f} s/epoch, "
                     f"{tr[n]['steps']} steps); evaluation through the live stack {_f(ev, 0)} s")
        else:
            L.append(f"- {n}: evaluation through the live stack {_f(ev, 0)} s")
    L += ["- Reproducing the shipped default with `lenscope model train` (28 epochs + heads; no need to rerun "
          "here): 958 s (16 min) wall on this shared 2-core box as recorded in the checkpoint's meta "
          "(33.7 s/epoch), about 10.5 min on idle cores; within the 20-minute budget.",
          ""]
    train_s = sum(tr.get(n, {}).get("timing", {}).get("wall_s", 0.0) for n in order)
    eval_s = sum(evals[n].get("wall_s") or 0.0 for n in order)
    fit_s = (summary.get("fit_default") or {}).get("wall_s") or 0.0
    L += [f"A full run from a fresh checkout on this box: about {(train_s + eval_s + fit_s) / 60 + 2:.0f} min "
          f"(training {train_s / 60:.1f} min, fitting the default's calibration + fusion {fit_s / 60:.1f} min, "
          f"six evaluations through the live stack {eval_s / 60:.1f} min, generating the catalog and corpus ~2 "
          "min); later runs reuse the cached checkpoints and evaluations in `--workdir`.", ""]
    return "\n".join(L)


def stage_report(workdir: Path, evals: dict[str, dict], trains: dict[str, dict], budget: Budget, reports: Path,
                 wall: dict[str, float]) -> dict[str, Path]:
    reports.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    names = [n for n in ("zero_shot", "ft_full", "ft_frozen_text", "ft_last_n", "ft_joint", "default") if n in evals]
    if names:
        p = reports / "relevance_models.png"
        _bar_plot(evals, names, p)
        plots["zero_shot_vs"] = p.name
    if "default" in evals:
        src = workdir / "eval" / "default" / "report"
        for key, suffix in (("recall_curves", "_recall.png"), ("gap_histograms", "_gap.png")):
            f = src / f"default{suffix}"
            if f.is_file():
                dst = reports / f"relevance_default{suffix}"
                shutil.copyfile(f, dst)
                plots[key] = dst.name
    summary = summarise(evals, trains, budget, reports, wall)
    fit_file = reports / "relevance_fit.json"
    if fit_file.is_file():
        summary["fit_default"] = json.loads(fit_file.read_text())
    js = reports / "relevance.json"
    js.write_text(_rel(json.dumps(summary, indent=2)) + "\n")
    md = reports / "relevance.md"
    md.write_text(_rel(render(summary, evals, budget, reports, plots)))
    log(f"wrote {md}, {js} and {len(plots)} plots")
    return {"markdown": md, "json": js}


# ---------------------------------------------------------------------------------------- foreign


def stage_foreign(workdir: Path, reports: Path) -> dict[str, Path]:
    """The shipped default on two catalogs its fit never saw (``foreign_catalog.py``): served vs raw
    signals vs a 16x16 thumbnail and random, photo + another variant's colour included."""
    import foreign_catalog

    from lenscope.export.pipeline import export_model

    repo = workdir / "foreign" / "repository"
    if not (repo / "export_manifest.json").is_file():
        if repo.exists():
            shutil.rmtree(repo)
        export_model(SHIPPED_SPEC, out=repo, log=lambda m: log(f"  [export] {m}"))
    t0 = time.perf_counter()
    report = foreign_catalog.run(repo, workdir / "foreign", log=log)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    report["machine"] = reporting.machine_info()
    report["command"] = "python benchmarks/relevance.py --stages foreign"
    reports.mkdir(parents=True, exist_ok=True)
    js, md = reports / "relevance_foreign.json", reports / "relevance_foreign.md"
    js.write_text(_rel(json.dumps(report, indent=2, default=str)) + "\n")
    md.write_text(_rel(foreign_catalog.render(report)))
    log(f"wrote {md} and {js}")
    return {"markdown": md, "json": js}


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--catalog", type=Path, default=None, help="a catalog in the documented format "
                    "(default: generate the bundled 6,000-product one); queries.jsonl next to it")
    ap.add_argument("--stages", default="data,train,fit,eval,report,foreign",
                    help="any of data,train,fit,eval,report,foreign (foreign: the real-products and an other-seed "
                         "procedural catalog, see foreign_catalog.py)")
    ap.add_argument("--corpus-images", type=int, default=Budget.corpus_images)
    ap.add_argument("--pretrain-epochs", type=int, default=Budget.pretrain_epochs)
    ap.add_argument("--finetune-epochs", type=int, default=Budget.finetune_epochs)
    ap.add_argument("--threads", type=int, default=Budget.threads)
    reporting.add_output_options(ap, "--reports")
    ap.add_argument("--models", default=None, help="comma-separated subset to evaluate (default: all trained + default)")
    args = ap.parse_args(argv)
    args.reports = reporting.output_dir(args.reports, args.publish)
    budget = Budget(args.corpus_images, args.pretrain_epochs, args.finetune_epochs, args.threads)
    stages = set(args.stages.split(","))
    args.workdir.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}
    if stages == {"foreign"}:
        stage_foreign(args.workdir, args.reports)
        return 0
    t0 = time.perf_counter()
    data = stage_data(args.workdir, budget, args.catalog)
    wall["data"] = time.perf_counter() - t0
    trains: dict[str, dict[str, Any]] = {}
    if "train" in stages or "eval" in stages or "report" in stages:
        t0 = time.perf_counter()
        trains = stage_train(args.workdir, budget, data) if "train" in stages else _cached_trains(args.workdir)
        wall["train"] = time.perf_counter() - t0
    if "fit" in stages:
        t0 = time.perf_counter()
        stage_fit(args.workdir, data, args.reports)
        wall["fit"] = time.perf_counter() - t0
    names = [r.name for r in RUNS if (args.workdir / "models" / f"{r.name}.pt").is_file()] + ["default"]
    if args.models:
        names = [n for n in names if n in args.models.split(",")]
    evals: dict[str, dict[str, Any]] = {}
    if "eval" in stages or "report" in stages:
        t0 = time.perf_counter()
        evals = stage_eval(args.workdir, data, names) if "eval" in stages else _cached_evals(args.workdir, names)
        wall["eval"] = time.perf_counter() - t0
    if "report" in stages:
        stage_report(args.workdir, evals, trains, budget, args.reports, wall)
    if "foreign" in stages:
        stage_foreign(args.workdir, args.reports)
    return 0


def _cached_trains(workdir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for r in RUNS:
        side = workdir / "models" / f"{r.name}.json"
        if side.is_file():
            out[r.name] = json.loads(side.read_text())
    return out


def _cached_evals(workdir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for n in names:
        f = workdir / "eval" / n / "report" / f"{n}.json"
        if f.is_file():
            out[n] = json.loads(f.read_text())
    return out


if __name__ == "__main__":
    sys.exit(main())
