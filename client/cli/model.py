"""`lenscope model train`: contrastive training or fine-tuning on a catalog, judged on held-out products.

Two presets, picked by whether there is a start checkpoint:

- no ``--init-checkpoint``: the shipped recipe (28 passes from the seeded init, lr 1e-3, bf16, the
  light augmentation), so its defaults reproduce ``export/weights/lenscope-tiny.pt``;
- ``--init-checkpoint``: a fine-tune of a user's catalog: lr 1e-4, at least 200 steps however small
  the catalog, crops suited to studio photos, precision picked for the CPU.

Either way the run ends with the held-out table (start vs trained vs a 16x16-thumbnail cosine,
heads vs the majority class) and refuses to write a result worse than its start unless ``--force``.
Torch is imported inside the command only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from lenscope.client.cli.paths import input_file, text_file
from lenscope.client.cli.terminal import escape_controls, log_to

console = Console(highlight=False)
log = log_to(console)

FINE_TUNE = {"lr": 1e-4, "warmup_steps": 20, "min_steps": 200, "augment_style": "studio", "precision": "auto"}


class TrainRefused(ValueError):
    """The trained model scored below its start on held-out products; nothing was written."""


def is_lenscope_checkpoint(path: Path) -> bool:
    """A checkpoint `model train` wrote: a torch zip whose pickle holds the clip/heads/meta keys (torch-free)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        pickles = [n for n in z.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            return False
        head = z.read(pickles[0])  # the pickle only: tensors live in other members
    return all(key in head for key in (b"clip", b"heads", b"meta"))


def spec_beside(out: Path) -> Path:
    return out.with_name(f"{out.stem}.spec.json")


def _is_our_spec(checkpoint: Path) -> Any:
    def ours(path: Path) -> bool:
        data = json.loads(path.read_text(encoding="utf-8"))
        return isinstance(data, dict) and data.get("checkpoint") == checkpoint.name
    return ours


def held_out_table(report: dict[str, Any], baseline: str) -> Table:
    from lenscope.export.training.heldout import table_rows

    title = (f"{report['products']} held-out products, ranked among all {report['gallery']} products' main images; "
             f"trained = step {report['best_step']} of {report['steps_run']} (the best held-out score)")
    table = Table(title=escape_controls(title), title_justify="left")
    for name in ("held-out", "n", "start", "trained", baseline):
        table.add_column(name, justify="left" if name == "held-out" else "right")
    for row in table_rows(report):
        table.add_row(*(escape_controls(c) for c in row))
    return table


def model_train_command(
    spec: Optional[Path] = typer.Option(None, callback=text_file, help="Model spec. Default: the shipped lenscope-tiny."),
    catalog: Optional[Path] = typer.Option(None, callback=text_file, help="Catalog (JSONL/CSV). Default: generate the bundled 6,000-product catalog (seed 0)."),
    out: Path = typer.Option(Path(".lenscope/train/model.pt"), help="Checkpoint to write (export/weights/lenscope-tiny.pt replaces the shipped one); a spec for it is written beside it (<name>.spec.json)."),
    init_checkpoint: Optional[Path] = typer.Option(None, callback=input_file, help="Start from this lenscope/open_clip checkpoint (fine-tune). Default: the seeded init."),
    epochs: int = typer.Option(28, help="Passes over the train split (28 = the shipped recipe); --steps overrides."),
    steps: Optional[int] = typer.Option(None, min=1, help="Optimiser steps. Default: epochs x steps per pass; fine-tuning: at least 200."),
    lr: Optional[float] = typer.Option(None, min=0, help="Peak learning rate. Default: 1e-3 from scratch, 1e-4 fine-tuning."),
    labels_from_catalog: Optional[bool] = typer.Option(None, "--labels-from-catalog/--labels-from-spec", help="Head label sets from the catalog's own values, or strictly the spec's. Default: the spec's when every catalog label fits them (ignoring case and spaces), else the catalog's."),
    fresh_heads: bool = typer.Option(False, "--fresh-heads", help="Start the heads from scratch (the start checkpoint's CLIP weights still load)."),
    holdout: float = typer.Option(0.2, min=0, max=0.9, help="Share of products held out (whole variant families) when the catalog has no train/val split."),
    eval_every: Optional[int] = typer.Option(None, min=0, help="Held-out evaluation every N steps. Default: ~20 per run; 0 = off (nothing can then be proven)."),
    patience: int = typer.Option(5, min=0, help="Stop after N held-out evaluations without a gain (0 = never); the best evaluation's weights are kept."),
    force: bool = typer.Option(False, "--force", help="Write the checkpoint even if it is worse than its start on held-out products."),
    allow_outside_images: bool = typer.Option(False, "--allow-outside-images", help="Read catalog images outside the catalog's folder (absolute paths, '..')."),
    precision: Optional[str] = typer.Option(None, help="fp32 | bf16 | auto. Default: bf16 from scratch (the recipe), auto fine-tuning."),
    strategy: str = typer.Option("full", help="full | frozen_text | frozen_image | last_n"),
    last_n_blocks: int = typer.Option(1, help="With strategy last_n: trainable blocks per tower."),
    heads: str = typer.Option("frozen", help="none | frozen (heads on frozen embeddings) | joint (multi-task)."),
    batch_size: int = typer.Option(128),
    seed: int = typer.Option(0),
) -> None:
    """Contrastive (CLIP) training or fine-tuning, CPU-capable; ends with a held-out table and writes only a
    model that is not worse than its start. The defaults without --init-checkpoint reproduce lenscope-tiny."""
    from lenscope.client.core.modelspec import load_spec
    from lenscope.client.core.outputs import check_output_file
    from lenscope.export.pipeline import DEFAULT_SPEC
    from lenscope.export.training.config import TrainConfig
    from lenscope.export.training.heldout import baseline_name
    from lenscope.export.training.loop import train

    spec_path = spec or DEFAULT_SPEC
    inputs = {"--spec": spec_path, "--catalog": catalog, "--init-checkpoint": init_checkpoint}
    check_output_file(out, "--out", is_lenscope_checkpoint, "a checkpoint", inputs=inputs)
    check_output_file(spec_beside(out), "--out's spec", _is_our_spec(out), "a spec", inputs=inputs)
    model_spec = load_spec(spec_path).model_copy(update={"checkpoint": None})  # never resume silently
    preset: dict[str, Any] = dict(FINE_TUNE) if init_checkpoint is not None else {}
    given = {"lr": lr, "precision": precision, "steps": steps}
    labels = "auto" if labels_from_catalog is None else "catalog" if labels_from_catalog else "spec"
    cfg = TrainConfig(**{**preset, **{k: v for k, v in given.items() if v is not None}},
                      epochs=epochs, strategy=strategy, last_n_blocks=last_n_blocks, heads=heads,
                      batch_size=batch_size, seed=seed, labels=labels, fresh_heads=fresh_heads, holdout=holdout,
                      eval_every=eval_every, patience=patience, force=force, allow_outside_images=allow_outside_images)
    if catalog is None:
        from lenscope.client.synth.catalog import generate_catalog

        catalog = Path(".lenscope/train-catalog/catalog.jsonl")
        if not catalog.is_file():
            log("generating the bundled catalog (6,000 products, seed 0) ...")
            catalog = generate_catalog(catalog.parent, 6000, seed=0, progress=True).catalog
    result = train(model_spec, catalog, out, cfg, spec_dir=Path(spec_path).parent, init_checkpoint=init_checkpoint,
                   log=log)
    report = result.meta.get("held_out")
    if report is not None:
        console.print(held_out_table(report, baseline_name()))
    if not result.written:
        raise TrainRefused(f"not written: {result.why}, so {out} would serve worse than the model it started from. "
                           "Rerun with --force to write it anyway, or change --lr / --steps / the catalog")
    sidecar = spec_beside(out)
    trained_spec = (result.spec or model_spec).model_copy(update={"checkpoint": out.name})
    sidecar.write_text(trained_spec.model_dump_json(indent=2, exclude_none=True) + "\n", encoding="utf-8")
    timing = result.meta.get("timing", {})
    log(f"wrote {result.checkpoint} ({result.checkpoint.stat().st_size / 1e6:.1f} MB) in {timing.get('total_s', 0):.0f} s"
        f"{' (' + result.why + ')' if report is not None else ''}; its spec {sidecar}; export it with "
        f"'lenscope model export --spec {sidecar}'")
