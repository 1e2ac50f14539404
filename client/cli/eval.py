"""Command functions for `lenscope eval` and `lenscope rerank fit` (mounted by cli.py).

Exit codes: 0 done; 1 the evaluation ran but export fidelity failed its tolerance; 2 cannot run
(bad inputs: catalog/queries file, model repository or spec, weights/calibration files, too little
labelled data).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from lenscope.client.cli.paths import input_file, text_file
from lenscope.client.cli.terminal import fail, log_to, warn
from lenscope.client.core.outputs import check_not_input, check_output_dir, check_output_file

console = Console(stderr=True, highlight=False)
log = log_to(console)
# Entries an eval / rerank-fit workdir holds once used (the server log, the exported repository).
WORKDIR_MARKERS = ("tritonserver.log", "repository/export_manifest.json")

SPLITS = ("train", "val", "test", "all")


def _fail(message: str, code: int = 2) -> None:
    fail(message, code)


def _loads_as(loader: Callable[[Path], Any]) -> Callable[[Path], bool]:
    """A file is ours when the loader of its kind accepts it (fusion weights, calibration)."""
    def ours(path: Path) -> bool:
        try:
            loader(path)
        except Exception:  # noqa: BLE001 - any failure means: not a file of this kind
            return False
        return True
    return ours


def _threshold(value: str) -> int | str:
    if value == "max":
        return "max"
    try:
        g = int(value)
    except ValueError:
        g = 0
    if g < 1:
        _fail(f"a relevance threshold is 'max' or an integer grade >= 1, got {value!r}")
    return g


def _model_source(repository: Optional[Path], spec: Optional[Path]) -> tuple[Optional[Path], Optional[Path]]:
    if repository is None and spec is None:
        default = Path("model_repository/cpu")
        if default.is_dir():
            return default, None
        _fail("give --repository (an exported model repository) or --spec (exported into the workdir)")
    return repository, spec


def _export_model(spec_path: Path, out: Path, *, log: Callable[[str], None]) -> Any:
    """The harness's exporter for --spec: imports the export package (and torch) only when exporting."""
    from lenscope.export.pipeline import export_model

    return export_model(spec_path, out, log=log)


def _torch_ranker() -> Any:
    """The torch side of the export-fidelity check, or None where the export package is not installed."""
    try:
        from lenscope.export.fidelity import TORCH_RANKER
    except ImportError:
        return None
    return TORCH_RANKER


def eval_command(
    catalog: Path = typer.Option(..., callback=text_file, help="Catalog (.jsonl/.csv) in the documented format."),
    queries: Optional[Path] = typer.Option(None, callback=text_file,
                                           help="Labelled queries (.jsonl). Default: queries.jsonl next to the catalog."),
    repository: Optional[Path] = typer.Option(None, help="Model repository to serve (default: model_repository/cpu)."),
    spec: Optional[Path] = typer.Option(None, callback=text_file,
                                        help="Model spec: exported into the workdir (needs torch); also enables the "
                                             "fidelity check for any model."),
    split: str = typer.Option("test", help="Split to evaluate: train | val | test | all (queries without a split)."),
    fusion: Optional[Path] = typer.Option(None, callback=text_file, help="Fusion weights file."),
    calibration: Optional[Path] = typer.Option(None, callback=text_file, help="Calibration file."),
    fit_on: str = typer.Option("val", help="Without files (given or shipped with the model): fit calibration + "
                                           "fusion on this split's labelled queries first; 'none' = the index's own."),
    shipped: bool = typer.Option(True, "--shipped/--no-shipped",
                                 help="Use the calibration/fusion files shipped next to the model's checkpoint."),
    out: Path = typer.Option(Path(".lenscope/eval/report"), help="Report directory (JSON, Markdown, PNG)."),
    name: str = typer.Option("eval", help="Report file stem."),
    workdir: Path = typer.Option(Path(".lenscope/eval/work"), help="Scratch: exported repository, indexes, logs."),
    fidelity: bool = typer.Option(True, "--fidelity/--no-fidelity", help="Triton vs torch Recall@10 (needs torch)."),
    tolerance: float = typer.Option(0.2, min=0, help="Fidelity tolerance, Recall@10 percentage points."),
    min_grade: str = typer.Option("max", help="Relevant for R@K/MRR: 'max' (the query's top grade: exact product) "
                                              "or a grade."),
    max_queries: Optional[int] = typer.Option(None, min=1, help="At most this many queries per type (seeded sample)."),
    plots: bool = typer.Option(True, "--plots/--no-plots"),
    allow_outside_images: bool = typer.Option(False, "--allow-outside-images", help="Read catalog images outside "
                                              "the catalog's folder (absolute paths, '..'), as 'index build' does."),
) -> None:
    """Run labelled queries through the live stack (tritonserver + index + re-ranker) and write a report:
    Recall@1/5/10, nDCG@10, MRR per query type and ranking variant, modality gap, heads, export fidelity."""
    from lenscope.client.ranking.calibration import CalibrationError
    from lenscope.client.catalog.rows import CatalogError
    from lenscope.client.eval.config import EvalConfig, EvaluationError
    from lenscope.client.eval.harness import evaluate
    from lenscope.client.eval.report import write_report
    from lenscope.client.ranking.pools import FitError
    from lenscope.client.core.modelspec import SpecError
    from lenscope.client.ranking.fusion import WeightsError

    if split not in SPLITS:
        _fail(f"--split must be one of {list(SPLITS)}, got {split!r}")
    if fit_on not in ("none", *SPLITS[:3]):
        _fail(f"--fit-on must be one of ['none', 'train', 'val', 'test'], got {fit_on!r}")
    if fit_on == split:
        warn(f"fitting on the evaluated split {split!r}: the numbers are optimistic")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        _fail(f"--name {name!r} must be a plain file stem (letters, digits, '_', '.', '-')")
    check_output_dir(out, "--out", (f"{name}.json", f"{name}.md"), "an evaluation report")
    check_output_dir(workdir, "--workdir", WORKDIR_MARKERS, "scratch files")
    check_not_input(workdir, "--workdir", {"--repository": repository})
    repository, spec = _model_source(repository, spec)
    config = EvalConfig(
        catalog=catalog, queries=queries, workdir=workdir, split=split, repository=repository, spec=spec,
        fusion=fusion, calibration=calibration, use_shipped=shipped, fit_split=None if fit_on == "none" else fit_on,
        min_grade=_threshold(min_grade), max_queries_per_type=max_queries, fidelity=fidelity,  # type: ignore[arg-type]
        fidelity_tolerance_points=tolerance, plots=plots, exporter=_export_model,
        torch_ranker=_torch_ranker() if fidelity else None, allow_outside_images=allow_outside_images,
    )
    try:
        report = evaluate(config, log=log)
    except (EvaluationError, CatalogError, SpecError, CalibrationError, WeightsError, FitError) as err:
        _fail(str(err))
    files = write_report(report, out, name, plots=plots)
    from lenscope.client.eval.config import TYPE_LABEL

    for t, h in report["headline"].items():
        fused = h.get("fused", {})
        log(f"{TYPE_LABEL[t]:<24} raw ANN R@10 {h.get('raw_ann', {}).get('R@10', float('nan')):.3f}  "
                      f"fused R@10 {fused.get('R@10', float('nan')):.3f} nDCG@10 {fused.get('nDCG@10', float('nan')):.3f}"
                      f"  (fused - best single {h.get('fused_minus_best_single_ndcg10_points', float('nan')):+.2f} pt)")
    log("report: " + ", ".join(str(p) for p in files.values()))
    f = report["fidelity"]
    if f.get("checked") and not f.get("ok"):
        _fail("export fidelity outside tolerance: " + json.dumps(f["types"]), 1)


def fit_fusion_command(
    out: Path = typer.Option(..., help="Fusion weights file to write (JSON; what `index build --fusion-weights` reads)."),
    calibration_out: Optional[Path] = typer.Option(None, help="Also write the fitted calibration (JSON)."),
    catalog: Optional[Path] = typer.Option(None, callback=text_file,
                                           help="Catalog in the documented format (fit through the live stack)."),
    queries: Optional[Path] = typer.Option(None, callback=text_file,
                                           help="Labelled queries (.jsonl). Default: queries.jsonl next to the catalog."),
    features: Optional[Path] = typer.Option(None, callback=text_file,
                                            help="Instead of a catalog: labelled rows (JSONL: {\"label\": 0|1, <signal>: "
                                                 "value, ...}), e.g. from logged searches and clicks."),
    repository: Optional[Path] = typer.Option(None, help="Model repository to serve (default: model_repository/cpu)."),
    spec: Optional[Path] = typer.Option(None, callback=text_file, help="Model spec (exported, needs torch)."),
    split: str = typer.Option("val", help="Split whose labelled queries are fitted on (never the test split)."),
    relevant: str = typer.Option("auto", help="Which grade counts as relevant: 'auto' (the better of 'max' and 2 "
                                              "on the fitting queries' nDCG@10), 'max', or a grade."),
    method: str = typer.Option("platt", help="Calibration: platt | isotonic."),
    workdir: Path = typer.Option(Path(".lenscope/rerank-fit"), help="Scratch: exported repository, index, logs."),
    max_queries: Optional[int] = typer.Option(None, min=1, help="At most this many queries per type."),
) -> None:
    """Learn fusion weights (and per-pair calibration) by logistic regression from labelled data."""
    from lenscope.client.catalog.rows import CatalogError
    from lenscope.client.ranking.fusion_pointwise import learn_fusion
    from lenscope.client.ranking.labelled_rows import read_labelled_rows
    from lenscope.client.ranking.pools import FitError
    from lenscope.client.core.modelspec import SpecError
    from lenscope.client.ranking.fusion import save_weights

    if method not in ("platt", "isotonic"):
        _fail(f"--method must be platt or isotonic, got {method!r}")
    if (catalog is None) == (features is None):
        _fail("give either --catalog (labelled queries through the live stack) or --features (labelled rows)")
    from lenscope.client.ranking.calibration import load_calibration
    from lenscope.client.ranking.fusion import load_weights

    inputs = {"--catalog": catalog, "--queries": queries, "--features": features, "--spec": spec}
    check_output_file(out, "--out", _loads_as(load_weights), "a fusion weights file", inputs)
    if calibration_out is not None:
        check_output_file(calibration_out, "--calibration-out", _loads_as(load_calibration), "a calibration file",
                          {**inputs, "--out": out})
    if catalog is not None:
        from lenscope.client.ranking.binding_file import binding_path_for, load_binding

        check_output_file(binding_path_for(out), "the binding file beside --out", _loads_as(load_binding),
                          "a fit binding file", {**inputs, "--out": out, "--calibration-out": calibration_out})
    if features is not None:
        if calibration_out is not None:
            _fail("--calibration-out needs raw cosines: fit from --catalog")
        try:
            x, y = read_labelled_rows(features)
            fit = learn_fusion(x, y)
        except FitError as err:
            _fail(str(err))
        save_weights(fit.weights, out)
        log(f"fitted on {fit.n_rows} rows ({fit.n_relevant} relevant; {fit.iterations} imputation "
                      f"iterations, converged {fit.converged}): {fit.weights.model_dump()} -> {out}")
        return
    if split not in SPLITS[:3]:
        _fail(f"--split must be one of {list(SPLITS[:3])}, got {split!r}")
    if split == "test":
        warn("fitting on the test split: evaluate on another split")
    thresholds = ("max", 2) if relevant == "auto" else (_threshold(relevant),)
    from lenscope.client.eval.config import EvalConfig, EvaluationError
    from lenscope.client.eval.fitting import fit_and_save

    check_output_dir(workdir, "--workdir", WORKDIR_MARKERS, "scratch files")
    repository, spec = _model_source(repository, spec)
    config = EvalConfig(catalog=catalog, queries=queries, workdir=workdir, split=split,  # type: ignore[arg-type]
                        repository=repository, spec=spec, max_queries_per_type=max_queries, fidelity=False,
                        exporter=_export_model)
    try:
        summary = fit_and_save(config, out, calibration_out, thresholds=thresholds, method=method,  # type: ignore[arg-type]
                               log=log)
    except (EvaluationError, CatalogError, SpecError, FitError) as err:
        _fail(str(err))
    console.print_json(json.dumps({k: summary[k] for k in ("min_grade", "weights", "selection_ndcg10",
                                                          "baseline_ndcg10", "fit")}))
    log(f"wrote {out}" + (f" and {calibration_out}" if calibration_out else "") + f" and {summary['binding_file']}")
