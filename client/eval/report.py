"""An evaluation report written out: ``<name>.json`` (the report dict, JSON-safe), ``<name>.md``
(headline, all rankings, modality gap, heads, fidelity, timings) and the PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lenscope.client.eval.config import COMBINED_VARIANTS, QUERY_TYPES, RAW_ANN, TYPE_LABEL
from lenscope.client.eval.plots import plot_gap_histograms, plot_recall_curves


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def metrics_markdown(table: dict[str, dict[str, dict[str, float]]], variants: Sequence[str] | None = None) -> str:
    lines = []
    for t in QUERY_TYPES:
        rows = table.get(t)
        if not rows:
            continue
        lines.append(f"**{TYPE_LABEL[t]}** ({next(iter(rows.values()))['n']} queries)\n")
        lines.append("| ranking | R@1 | R@5 | R@10 | nDCG@10 | MRR | Rfrac@10 |")
        lines.append("|---|---|---|---|---|---|---|")
        order = sorted(rows, key=lambda v: (not v.startswith("single:"), COMBINED_VARIANTS.index(v)
                                            if v in COMBINED_VARIANTS else 0, v))
        for v in order:
            if variants is not None and v not in variants:
                continue
            m = rows[v]
            name = f"{v} (raw ANN)" if v == RAW_ANN[t] else v
            lines.append(f"| {name} | {_fmt(m['R@1'])} | {_fmt(m['R@5'])} | {_fmt(m['R@10'])} | "
                         f"{_fmt(m['nDCG@10'])} | {_fmt(m['MRR'])} | {_fmt(m['Rfrac@10'])} |")
        lines.append("")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    m, r = report["model"], report["ranking"]
    out = [f"# Evaluation: {m['name']} on {Path(report['catalog']['path']).name} ({report['catalog']['split']} split)",
           "",
           f"Model hash `{m['model_hash']}`, heads {'trained' if m['heads_trained'] else 'untrained'}; "
           f"{report['catalog']['indexed']} products indexed through Triton; {report['queries']['n']} queries "
           f"({', '.join(f'{n} {t}' for t, n in report['queries']['by_type'].items())}).",
           "",
           f"- calibration: {r['calibration_source']}",
           f"- fusion weights: {r['weights_source']}: "
           + ", ".join(f"{k} {v:.3g}" for k, v in r["weights"].items() if k != "schema_version"),
           "", "Definitions: " + "; ".join(f"**{k}** {v}" for k, v in report["definitions"].items() if k != "variants"),
           "", "Variants: " + "; ".join(f"`{k}` {v}" for k, v in report["definitions"]["variants"].items()), "",
           "## Headline", "",
           "| query type | raw ANN R@10 | best single signal nDCG@10 | fused nDCG@10 | fused - best single (pt) | "
           "fused R@10 | heads on - off R@10 (pt) | served nDCG@10 / R@10 (ranked by) |",
           "|---|---|---|---|---|---|---|---|"]
    served = r.get("served", {}).get("decisions", {})
    for t, h in report["headline"].items():
        bs = h.get("best_single", {})
        sv = h.get("served", {})
        by = served.get(t, {}).get("ranked_by", "-")
        out.append(f"| {TYPE_LABEL[t]} | {_fmt(h.get('raw_ann', {}).get('R@10'))} | "
                   f"{_fmt(bs.get('nDCG@10'))} ({bs.get('variant', '-')}) | {_fmt(h.get('fused', {}).get('nDCG@10'))} | "
                   f"{_fmt(h.get('fused_minus_best_single_ndcg10_points'), 2)} | {_fmt(h.get('fused', {}).get('R@10'))} | "
                   f"{_fmt(h.get('heads_on_minus_off_R@10_points'), 2)} | "
                   f"{_fmt(sv.get('nDCG@10'))} / {_fmt(sv.get('R@10'))} ({by}) |")
    if served:
        out += ["", "Served ranking per query type (the index build's do-no-harm decision): "
                + "; ".join(f"**{t}** {d['ranked_by']} ({d['rule']}): {d['reason']}" for t, d in served.items())]
    out += ["", "## All rankings", "", metrics_markdown(report["metrics"])]
    if "recall_curves" in plots:
        out += [f"![Recall@K]({plots['recall_curves']})", ""]
    gap = report["modality_gap"]
    if gap.get("calibration"):
        out += ["## Modality gap", "",
                "Mean raw cosine of matched (relevant) and unmatched candidates per modality pair on the data the "
                "calibration was fitted on, the calibrated value at those means, and the gap of each pair's matched "
                "mean to image->image, before and after calibration.", "",
                "| pair | raw matched | raw unmatched | calibrated @ matched | calibrated @ unmatched | gap raw | gap calibrated |",
                "|---|---|---|---|---|---|---|"]
        for pair, g in gap["calibration"].items():
            out.append(f"| {pair} | {_fmt(g['raw_matched'])} | {_fmt(g['raw_unmatched'])} | "
                       f"{_fmt(g['calibrated_at_matched_mean'])} | {_fmt(g['calibrated_at_unmatched_mean'])} | "
                       f"{_fmt(g.get('gap_to_image_image_raw'))} | {_fmt(g.get('gap_to_image_image_calibrated'))} |")
        out.append("")
    cand = gap.get("candidates") or {}
    if cand:
        out += ["On the evaluated split's candidate pools (matched = relevant, unmatched = grade 0; partially "
                "relevant left out), mean raw cosine and mean calibrated value:", "",
                "| pair | raw matched | raw unmatched | calibrated matched | calibrated unmatched |",
                "|---|---|---|---|---|"]
        for pair, d in cand.items():
            means = [_fmt((d.get(k) or {}).get("mean")) for k in ("raw_matched", "raw_unmatched", "calibrated_matched",
                                                                  "calibrated_unmatched")]
            out.append(f"| {pair} | " + " | ".join(means) + " |")
        out.append("")
    if "gap_histograms" in plots:
        out += [f"![modality gap]({plots['gap_histograms']})", ""]
    a = report["attributes"]
    if a.get("label_notes"):
        out += ["## Attribute labels", "", "The catalog's labels differ from the model's label sets:", ""]
        out += [f"- {attr}: {note}" for attr, note in sorted(a["label_notes"].items())] + [""]
    if a.get("catalog_images") or a.get("query_photos"):
        out += ["## Attribute heads", "", f"Heads {'trained' if a['heads_trained'] else 'untrained (seeded init)'}; "
                "outputs from Triton." + _own_labels_note(a.get("own_image_labels") or {}), "",
                "| attribute | catalog images acc | macro-F1 | user photos acc | macro-F1 |",
                "|---|---|---|---|---|"]
        for attr in sorted(set(a["catalog_images"]) | set(a["query_photos"])):
            c, p = a["catalog_images"].get(attr, {}), a["query_photos"].get(attr, {})
            out.append(f"| {attr} | {_fmt(c.get('accuracy'))} | {_fmt(c.get('macro_f1'))} | "
                       f"{_fmt(p.get('accuracy'))} | {_fmt(p.get('macro_f1'))} |")
        out.append("")
    f = report["fidelity"]
    out += ["## Export fidelity", ""]
    if f.get("checked"):
        out += [f"Recall@10 of the raw ANN ranking through Triton (ONNX) vs the torch model in-process "
                f"({f['why']}); tolerance {f['tolerance_points']} points: **{'OK' if f['ok'] else 'FAILED'}**.", "",
                "| query type | Triton R@10 | torch R@10 | diff (pt) | identical top-10 |", "|---|---|---|---|---|"]
        for t, d in f["types"].items():
            label = TYPE_LABEL[t] + ("" if d.get("in_verdict", True) else " (information)")
            out.append(f"| {label} | {_fmt(d['triton_R@10'], 4)} | {_fmt(d['torch_R@10'], 4)} | "
                       f"{_fmt(d['diff_points'], 2)} | {_fmt(d['identical_top10_share'], 3)} |")
        if f.get("note"):
            out += ["", f"The verdict covers {f['note']}."]
    else:
        out.append(f"Not checked: {f.get('reason')}.")
    ts = report["timings_s"]
    out += ["", "## Timings", "", ", ".join(f"{k} {v}" for k, v in ts.items()), ""]
    return "\n".join(out)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(report: dict[str, Any], out_dir: Path, name: str = "eval", plots: bool = True) -> dict[str, Path]:
    """``<name>.json``, ``<name>.md`` and ``<name>_recall.png`` / ``<name>_gap.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    rel: dict[str, str] = {}
    if plots:
        p = out_dir / f"{name}_recall.png"
        plot_recall_curves(report["recall_curves"]["types"], report["recall_curves"]["ks"], p,
                           f"{report['model']['name']}: Recall@K ({report['catalog']['split']} split)")
        files["recall_curves"], rel["recall_curves"] = p, p.name
        if report.get("_gap_samples"):
            p = out_dir / f"{name}_gap.png"
            plot_gap_histograms(report["_gap_samples"], p, f"{report['model']['name']}: matched vs unmatched "
                                "candidates per modality pair, before (top) and after (bottom) calibration")
            files["gap_histograms"], rel["gap_histograms"] = p, p.name
    js = out_dir / f"{name}.json"
    js.write_text(json.dumps(_jsonable(report), indent=2) + "\n", encoding="utf-8")
    md = out_dir / f"{name}.md"
    md.write_text(render_markdown(report, rel), encoding="utf-8")
    files.update({"json": js, "markdown": md})
    return files


def _own_labels_note(own: dict[str, int]) -> str:
    """Says how many scored images had labels of their own (the catalog's per-image ``attributes``)."""
    if not any(own.values()):
        return " Each image is scored against its product's labels (the catalog gives no image its own)."
    return (f" Scored against each image's own labels where the catalog gives them ({own.get('catalog_images', 0)} "
            f"catalog image(s), {own.get('query_photos', 0)} query photo(s)), else its product's.")
