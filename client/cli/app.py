"""`lenscope <noun> <verb>`: one console entry point.

Torch is imported only inside the `model` commands, so serving and searching start without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from lenscope.client.cli.boundary import BoundaryGroup
from lenscope.client.cli.eval import eval_command, fit_fusion_command
from lenscope.client.cli.paths import text_file
from lenscope.client.cli.terminal import log_to
from lenscope.client.cli.search import search_command
from lenscope.client.cli.serve import serve_app
from lenscope.client.cli.web import serve_web_command
from lenscope.client.cli.index import (
    catalog_generate_command,
    index_build_command,
    index_inspect_command,
    index_prune_command,
    index_remove_command,
)
from lenscope.client.cli.model import is_lenscope_checkpoint, model_train_command  # noqa: F401 (tests import it here)

# Plain (click) help: it wraps at any width, where Rich's option panels cut names at 80 columns.
PLAIN = dict(no_args_is_help=True, add_completion=False, rich_markup_mode=None)
app = typer.Typer(help="Lenscope: visual product search on Triton.", cls=BoundaryGroup, pretty_exceptions_enable=False,
                  **PLAIN)
model_app = typer.Typer(help="Export, verify and build models.", **PLAIN)
app.add_typer(model_app, name="model")
model_app.command("train", short_help="Contrastive training / fine-tuning, judged on held-out products.")(model_train_command)
serve_app.command("web", short_help="Serve the web demo (photo/text search, facets, scores).")(serve_web_command)
app.add_typer(serve_app, name="serve")
app.command("search", short_help="Search by photo and/or text; hits with score breakdown.")(search_command)
app.command("eval", short_help="Recall@K, nDCG, MRR of labelled queries via the live stack.")(eval_command)
rerank_app = typer.Typer(help="Fit fusion weights and calibration from labelled queries.", **PLAIN)
rerank_app.command("fit", short_help="Learn fusion weights and calibration from labelled data.")(fit_fusion_command)
app.add_typer(rerank_app, name="rerank")
index_app = typer.Typer(help="Build and inspect search indexes.", **PLAIN)
index_app.command("build", short_help="Embed a catalog through Triton, publish an index bundle.")(index_build_command)
index_app.command("inspect", short_help="Show a bundle: rows, facets, model, fit decision.")(index_inspect_command)
index_app.command("remove", short_help="Publish the index without some products (no Triton).")(index_remove_command)
index_app.command("prune", short_help="Drop the Milvus collections of old index versions.")(index_prune_command)
app.add_typer(index_app, name="index")
catalog_app = typer.Typer(help="Catalogs: generate the bundled procedural one.", **PLAIN)
catalog_app.command("generate", short_help="Generate the procedural catalog (images, photos, queries).")(catalog_generate_command)
app.add_typer(catalog_app, name="catalog")

console = Console(highlight=False)
log = log_to(console)


@model_app.command("export", short_help="Export to ONNX, verify against torch, write a repository.")
def model_export(
    spec: Optional[Path] = typer.Option(None, callback=text_file, help="Model spec (JSON/YAML). Default: the shipped lenscope-tiny."),
    out: Path = typer.Option(Path("model_repository/cpu"), help="Where to write the Triton model repository."),
    profile: str = typer.Option("cpu", help="cpu (python backend + onnxruntime) | gpu (onnxruntime/TensorRT backends)."),
    gpu_backend: str = typer.Option("onnxruntime-trt", help="gpu profile: onnxruntime-trt | onnxruntime | tensorrt_plan."),
    gpu_preprocess: str = typer.Option("dali", help="gpu profile: dali (GPU decode/resize/normalise; needs the [dali] extra, else python is kept and the export says so) | python."),
    max_batch_size: int = typer.Option(32, help="max_batch_size of every model."),
    queue_delay_us: Optional[int] = typer.Option(None, min=0, max=100_000, help="Dynamic batching max_queue_delay_microseconds (default: 0 on cpu, measured in benchmarks/reports/perf_analyzer.md; 500 on gpu)."),
    encoder_instances: int = typer.Option(1, help="Instances of each encoder model."),
    intra_op_threads: int = typer.Option(1, help="cpu profile: onnxruntime threads per encoder instance."),
    cpu_embed: str = typer.Option("fused", help="cpu profile: fused (embed_image / embed_text each one python model: preprocessing + encoder + heads in one hop, measured in benchmarks/reports/perf_analyzer.md) | ensemble (one python model per step)."),
    embed_instances: int = typer.Option(2, help="cpu profile, fused: instances of each fused model."),
    onnx_dir: Optional[Path] = typer.Option(None, help="Keep the exported ONNX files here (for build-trt)."),
) -> None:
    """Export the spec's towers to ONNX, verify them against torch, write the repository."""
    from lenscope.export.repository import RepositorySettings, check_repository_out

    check_repository_out(out)  # before torch loads (~10-60 s): a folder we did not write is refused at once
    settings = RepositorySettings(
        profile=profile, gpu_backend=gpu_backend, gpu_preprocess=gpu_preprocess, max_batch_size=max_batch_size,
        encoder_instances=encoder_instances, intra_op_threads=intra_op_threads, cpu_embed=cpu_embed,
        embed_instances=embed_instances,
        **({} if queue_delay_us is None else {"max_queue_delay_microseconds": queue_delay_us}),
    )
    from lenscope.export.pipeline import DEFAULT_SPEC, export_model

    export_model(spec or DEFAULT_SPEC, out, settings, onnx_dir=onnx_dir, log=log)


@model_app.command("build-trt", short_help="Build TensorRT engines and a tensorrt_plan repository.")
def model_build_trt(
    onnx_dir: Path = typer.Option(..., exists=True, file_okay=False, help="ONNX files from `model export --onnx-dir`."),
    out: Path = typer.Option(..., help="Where to write the gpu repository with TensorRT engines."),
    spec: Optional[Path] = typer.Option(None, callback=text_file, help="Model spec the ONNX files came from."),
    fp16: bool = typer.Option(True, help="Build fp16 engines."),
    max_batch_size: int = typer.Option(32, help="Largest batch the engines accept."),
) -> None:
    """Build TensorRT engines (needs a GPU and the `tensorrt` package) and write a tensorrt_plan repository."""
    from lenscope.client.core.outputs import check_not_input
    from lenscope.export.repository import check_repository_out
    from lenscope.export.trt import build_trt_repository

    check_not_input(out, "--out", {"--onnx-dir": onnx_dir})
    check_repository_out(out)
    build_trt_repository(onnx_dir, out, spec, fp16=fp16, max_batch_size=max_batch_size, log=log)


@model_app.command("fidelity", short_help="fp16 fidelity gate: an fp16 graph against fp32 on a catalog.")
def model_fidelity(
    onnx_dir: Path = typer.Option(..., exists=True, file_okay=False, help="ONNX files from `model export --onnx-dir`."),
    catalog: Path = typer.Option(..., callback=text_file, help="Catalog (JSONL/CSV); queries.jsonl beside it is used when present."),
    queries: Optional[Path] = typer.Option(None, callback=text_file, help="Queries with relevance (default: queries.jsonl beside the catalog)."),
    max_products: Optional[int] = typer.Option(None, min=1, help="Use the first N products only."),
) -> None:
    """Embed the catalog and its queries with the fp32 graphs and their fp16 conversion (onnxruntime CPU);
    per-row cosine and Recall@10 delta (<= 0.2 pt passes); the numbers go into the manifest beside the graphs."""
    from lenscope.export.precision import measure, record

    rec = measure(onnx_dir, catalog, queries, "fp16", max_products, log=log)
    record(onnx_dir, rec)
    log(f"fp16 vs fp32 on {rec.n_products} products / {rec.n_queries} queries: min cosine {rec.min_cosine:.9f} "
        f"(>= {rec.min_cosine_bound}), Recall@10 {rec.recall_at_10_fp32:.4f} -> {rec.recall_at_10_variant:.4f} "
        f"(delta {rec.recall_at_10_delta_pt:+.2f} pt, <= {rec.max_recall_delta_pt}): {'PASSED' if rec.passed else 'FAILED'}")
    log(f"recorded in {onnx_dir / 'export_manifest.json'} under fidelity.fp16")
    if not rec.passed:
        raise typer.Exit(1)


@model_app.command("check-plans", short_help="Refuse TensorRT plans this image or GPU cannot load.")
def model_check_plans(
    repository: Path = typer.Argument(..., exists=True, file_okay=False, help="A gpu repository with tensorrt_plan encoders."),
) -> None:
    """Check every plan against its model.plan.json (TensorRT version, GPU compute capability, model hash,
    sha256) and the TensorRT / GPU here; run it in the serving image before tritonserver starts."""
    from lenscope.export.plan_check import check_repository_plans, current_runtime

    runtime = current_runtime()
    checked = check_repository_plans(repository, runtime)
    if not checked:
        log(f"{repository}: no TensorRT plans (nothing to check)")
    for name, info in checked.items():
        log(f"  {name}: TensorRT {info.tensorrt_version}, {info.gpu_name} (sm {info.compute_capability}), "
            f"batch {info.min_batch}/{info.opt_batch}/{info.max_batch}: loads here")


@model_app.command("build-plans", short_help="Build a repository's TensorRT plans here, with trtexec (serving image).")
def model_build_plans(
    repository: Path = typer.Argument(..., exists=True, file_okay=False,
                                      help="A gpu repository exported with --gpu-backend tensorrt_plan (ONNX + plan recipes)."),
    cache: Path = typer.Option(Path("/trt-cache/plans"), file_okay=False,
                               help="Plans and timing caches, keyed by model hash, TensorRT, GPU and batch profile."),
    trtexec: str = typer.Option("/usr/src/tensorrt/bin/trtexec", help="trtexec of the serving image."),
) -> None:
    """Turn each encoder's ONNX graph into model.plan with its recipe's shape profile (fp16), on this GPU and
    TensorRT, reusing a checked plan from the cache when one fits; run it before tritonserver starts."""
    from lenscope.export.plan_build import build_repository_plans, with_trtexec_version
    from lenscope.export.plan_check import current_runtime

    runtime = with_trtexec_version(current_runtime(), trtexec)
    done = build_repository_plans(repository, runtime, cache, trtexec, log=log)
    if not done:
        log(f"{repository}: no plan recipes (export with --profile gpu --gpu-backend tensorrt_plan); nothing built")


@app.command("demo", short_help="Export, index, serve and query the bundled catalog.")
def demo(
    repository: Path = typer.Option(Path("model_repository/cpu"), help="Model repository (exported if missing)."),
    reexport: bool = typer.Option(False, help="Export again even if the repository exists."),
    web: bool = typer.Option(True, help="After the queries, serve the web demo on top of the stack."),
    web_port: int = typer.Option(8080, min=1, max=65535, help="Web demo port."),
    web_seconds: float = typer.Option(0.0, help="Stop the web demo after this many seconds (0 = at Ctrl-C)."),
) -> None:
    """Export the default model, index the bundled catalog through Triton, serve search, run queries."""
    from lenscope.client.cli.demo import run_demo

    run_demo(repository, reexport=reexport, console=Console(width=max(console.width, 150)),
             web_port=web_port if web else None, web_seconds=web_seconds)


if __name__ == "__main__":
    app()
