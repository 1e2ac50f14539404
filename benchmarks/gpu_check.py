"""One command for a GPU machine: export ViT-B-16, serve it on the fastest runtime present, load it at
batch 1/8/32 x concurrency 1-64, run the fidelity gate on what was served, write a report.

    python benchmarks/gpu_check.py                          # a GPU machine; sized for 8 minutes on one H100
    python benchmarks/gpu_check.py --device cpu --smoke     # any machine: the script's logic, tiny model

Steps (each timed in the report; new load points stop once ``--budget-s`` is spent, and are listed):

1. Export ``benchmarks/specs/vit-b-16.json`` (seeded weights: speed, not relevance) to ONNX, verified
   against torch, plus its cpu repository (``--smoke``: the shipped tiny model).
2. Runtime (``--runtime auto``; the report says which ran and why):
   ``tensorrt`` inside NVIDIA's Triton 24.10 image (its ``tritonserver`` and onnxruntime backend): the gpu
   profile, TensorRT EP fp16 with engine/timing caches and profiles 1/8/32, DALI preprocessing if
   nvidia-dali is importable (else the python preprocessing, as the manifest records);
   ``torch`` anywhere else with CUDA torch: pip tritonserver (nvidia-pytriton) serving the encoders as
   TorchScript in fp16 with CUDA graphs per batch bucket (export/backends/torch_runner.py); with
   ``--device cpu`` the same files run eager in fp32.
3. Baseline: the traced image tower in-process through the same runner (fp16 + CUDA graphs on a GPU),
   per batch size: what serving would cost with no server.
4. Load: perf_analyzer (``LENSCOPE_PERF_ANALYZER``, the NGC SDK binary, or the pinned tritonclient 2.51
   wheel benchmarks/perf_analyzer.py installs) on ``embed_image``, ``embed_text`` and ``image_encoder``
   at every ``--batches`` x ``--concurrency``; where perf_analyzer cannot run, the project's own
   closed-loop client (tritonclient gRPC, threads) measures the same points and the report says so.
5. Fidelity gate: catalog images and queries embedded through the running server vs the fp32 ONNX
   graphs under onnxruntime CPU with the Pillow preprocessing: per-row cosine and Recall@10 delta,
   bounds from export/precision.py (0.2 pt, 0.999). On a GPU the record is written into the export
   manifest beside the graphs (variant tensorrt-fp16 / torch-fp16). Exit code 3 when it fails.

Not yet run on a GPU (no GPU was available where it was written): the ``--device cpu --smoke`` run is
tested (tests/benchmarks/test_gpu_check_smoke.py); the 8-minute sizing (``--budget-s`` 420 for export,
engine builds and load, then fidelity and the baseline) is an estimate until a GPU run reports it.

Needs only this repository installed (``pip install -e .[export,triton]`` / ``make setup``) and what a
GPU machine has: torch, onnx, onnxruntime CPU. Nothing is downloaded except perf_analyzer's pinned
wheel when no binary is present (offline: the fallback client runs instead).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_runtimes  # noqa: E402
import perf_analyzer as pa  # noqa: E402
import reporting  # noqa: E402
import stack  # noqa: E402

from lenscope.client.core import contract  # noqa: E402

VIT_SPEC = Path(__file__).resolve().parent / "specs" / "vit-b-16.json"
LOAD_MODELS = (contract.EMBED_IMAGE, contract.EMBED_TEXT, contract.IMAGE_ENCODER)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda when torch sees a GPU")
    p.add_argument("--runtime", choices=("auto", "tensorrt", "torch"), default="auto", help="see step 2")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shipped model, batches 1,2, concurrency 1,2, 24 products (logic check)")
    p.add_argument("--spec", type=Path, default=None, help=f"model spec (default {VIT_SPEC.name}; --smoke: the tiny one)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--concurrency", default=None, help="comma-separated concurrency levels (default 1,2,4,8,16,32,64)")
    p.add_argument("--window-ms", type=int, default=None, help="perf_analyzer window (default 1000)")
    p.add_argument("--max-trials", type=int, default=3, help="perf_analyzer windows per point at most")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="stop starting new load points after this many seconds since start (default 420: 8 min in all)")
    p.add_argument("--products", type=int, default=None, help="catalog products for the fidelity gate (default 200)")
    p.add_argument("--ready-timeout-s", type=float, default=300.0, help="server start incl. TensorRT engine builds")
    p.add_argument("--tritonserver", type=Path, default=None, help="the Triton image's tritonserver (default: on PATH or /opt/tritonserver)")
    p.add_argument("--no-perf-analyzer", action="store_true", help="use the project's own load client")
    p.add_argument("--workdir", type=Path, default=reporting.WORK / "gpu_check")
    reporting.add_output_options(p)
    args = p.parse_args(argv)
    args.out = reporting.output_dir(args.out, args.publish)
    smoke = args.smoke
    args.batches = [int(b) for b in (args.batches or ("1,2" if smoke else "1,8,32")).split(",") if b.strip()]
    args.concurrency = [int(c) for c in (args.concurrency or ("1,2" if smoke else "1,2,4,8,16,32,64")).split(",") if c.strip()]
    args.window_ms = args.window_ms or 1000
    args.products = args.products or (24 if smoke else 200)
    from lenscope.export.pipeline import DEFAULT_SPEC

    args.spec = args.spec or (DEFAULT_SPEC if smoke else VIT_SPEC)
    return args


def _device(requested: str) -> str:
    """auto: cuda when torch sees a GPU, or nvidia-smi lists one (a CPU torch inside the Triton image
    still serves on the GPU through Triton; only the in-process baseline then runs on the CPU)."""
    if requested != "auto":
        return requested
    import shutil
    import subprocess

    import torch

    if torch.cuda.is_available():
        return "cuda"
    smi = shutil.which("nvidia-smi")
    listed = smi and subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout.strip()
    return "cuda" if listed else "cpu"


# -- load ----------------------------------------------------------------------------------------


def _client_inputs(model: str, batch: int, images: list[bytes], titles: list[str], size: int) -> list[Any]:
    import tritonclient.grpc as grpcclient

    if model == contract.IMAGE_ENCODER:
        t = grpcclient.InferInput(contract.PIXEL_VALUES, [batch, 3, size, size], "FP32")
        t.set_data_from_numpy(np.zeros((batch, 3, size, size), np.float32))
        return [t]
    name, items = (contract.IMAGE, images) if model == contract.EMBED_IMAGE else (contract.TEXT, [s.encode() for s in titles])
    t = grpcclient.InferInput(name, [batch, 1], "BYTES")
    t.set_data_from_numpy(np.array([[items[i % len(items)]] for i in range(batch)], dtype=object))
    return [t]


def client_point(url: str, model: str, batch: int, concurrency: int, seconds: float, images: list[bytes],
                 titles: list[str], size: int) -> dict[str, Any]:
    """The project's own closed loop (where perf_analyzer cannot run): ``concurrency`` threads, one
    gRPC client each, requests of ``batch`` items for ``seconds``."""
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    end = time.perf_counter() + seconds

    def worker() -> None:
        client = grpcclient.InferenceServerClient(url)
        inputs = _client_inputs(model, batch, images, titles, size)
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                client.infer(model, inputs)
            except Exception as err:  # noqa: BLE001 - counted and reported, never hidden
                with lock:
                    errors.append(str(err)[:200])
                continue
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000.0)
        client.close()

    with futures.ThreadPoolExecutor(concurrency) as pool:
        for job in [pool.submit(worker) for _ in range(concurrency)]:
            job.result()
    stats = reporting.percentiles(latencies)
    out: dict[str, Any] = {"tool": "lenscope-client", "requests": len(latencies),
                           "throughput": round(len(latencies) * batch / seconds, 2),
                           **{f"{k}_ms": v for k, v in stats.items()}}
    if errors:
        out["errors"], out["first_error"] = len(errors), errors[0]
    return out


def pa_point(binary: Path, env: dict[str, str], url: str, model: str, batch: int, concurrency: int, data: Path | None,
             window_ms: int, max_trials: int, csv_path: Path) -> dict[str, Any]:
    """perf_analyzer at one (batch, concurrency); reuses perf_analyzer.py's parsing."""
    argv_data = ["--input-data", str(data)] if data else ["--input-data", "zero"]
    import subprocess

    argv = [str(binary), "-i", "grpc", "-u", url, "-m", model, "-b", str(batch), *argv_data,
            "--concurrency-range", str(concurrency), "-p", str(window_ms), "-s", "25", "-r", str(max_trials),
            "-f", str(csv_path)]
    csv_path.unlink(missing_ok=True)
    budget = (window_ms / 1000) * (max_trials + 2) * 3 + 60
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=budget)
    stable = csv_path.is_file()
    if not stable:  # as perf_analyzer.py: measure once more accepting any spread, and flag the point
        argv[argv.index("-s") + 1] = "1000"
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=budget)
    if not csv_path.is_file():
        return {"tool": "perf_analyzer", "error": " ".join((proc.stderr or proc.stdout).strip()[-400:].split())}
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    if not rows:
        return {"tool": "perf_analyzer", "error": "empty CSV"}
    row = rows[-1]
    ms = lambda k: round(float(row[k]) / 1000, 3) if row.get(k) else None  # noqa: E731
    return {"tool": "perf_analyzer", "stable": stable, "throughput": float(row["Inferences/Second"]), "p50_ms": ms("p50 latency"),
            "p90_ms": ms("p90 latency"), "p95_ms": ms("p95 latency"), "p99_ms": ms("p99 latency")}


# -- baseline and fidelity -----------------------------------------------------------------------


def inprocess_baseline(traced: Path, device: str, batches: list[int], size: int, seconds: float) -> list[dict[str, Any]]:
    """The traced image tower through the same GraphRunner the server uses, no server in between."""
    import importlib.util

    from lenscope.export.repository import BACKENDS_DIR

    spec = importlib.util.spec_from_file_location("torch_runner", BACKENDS_DIR / "torch_runner.py")
    runner_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner_mod)  # type: ignore[union-attr]
    runner = runner_mod.GraphRunner(str(traced), device=device, fp16=device == "cuda", graph_batches=tuple(batches),
                                    example_shape=(3, size, size))
    rows = []
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32)
        for _ in range(3):  # warm-up (cuDNN / TorchScript pick their kernels)
            runner.run(x)
        lat, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            runner.run(x)
            lat.append((time.perf_counter() - t0) * 1000.0)
        rows.append({"batch": b, "device": str(runner.device), "precision": "fp16" if runner.fp16 else "fp32",
                     "cuda_graphs": bool(runner.graphs), "runs": len(lat), "images_per_s": round(len(lat) * b / seconds, 1),
                     **{f"{k}_ms": v for k, v in reporting.percentiles(lat).items()}})
    return rows


def fidelity(url: str, onnx_dir: Path, catalog_path: Path, variant: str, runtime: str) -> Any:
    """What the server returns vs the fp32 ONNX graphs (onnxruntime CPU, Pillow preprocessing)."""
    from lenscope.client.catalog.reader import read_catalog, read_queries
    from lenscope.client.core.manifest import FidelityRecord, load_manifest
    from lenscope.client.eval.queries import query_image
    from lenscope.client.inputs.image_files import read_catalog_image
    from lenscope.client.inputs.preprocess import preprocess_bytes
    from lenscope.client.inputs.tokenizer import ClipTokenizer
    from lenscope.client.triton.client import ClientConfig, TritonEmbedder
    from lenscope.export.precision import MAX_RECALL_DELTA_PT, MIN_COSINE, _recall, _run, _session, row_cosines

    manifest = load_manifest(onnx_dir)
    spec = manifest.spec
    catalog = read_catalog(catalog_path)
    rows = list(catalog)
    ids = [r.product_id for r in rows]
    qset = read_queries(Path(catalog_path).with_name("queries.jsonl"), catalog)
    queries = [q for q in qset if q.split == "test"] or list(qset)
    text_q = [q for q in queries if q.type == "text" and q.text]
    image_q = [q for q in queries if q.type in ("image", "image+text") and q.image]
    images = [read_catalog_image(catalog.root, r.image, max_bytes=spec.limits.max_image_bytes, allow_outside=True) for r in rows]
    q_images = [query_image(qset, q) for q in image_q]

    img_sess, txt_sess = _session(onnx_dir / contract.IMAGE_ONNX), _session(onnx_dir / contract.TEXT_ONNX)
    pix = lambda bs: np.stack([preprocess_bytes(b, spec.preprocess, spec.limits) for b in bs]).astype(np.float32)  # noqa: E731
    tok = ClipTokenizer(onnx_dir / contract.BPE_VOCAB_FILE, spec.context_length)
    ref = {"keys": _run(img_sess, contract.PIXEL_VALUES, pix(images)),
           "image": _run(img_sess, contract.PIXEL_VALUES, pix(q_images)) if q_images else np.zeros((0, spec.embed_dim)),
           "text": _run(txt_sess, contract.INPUT_IDS, np.stack([tok.encode(q.text) for q in text_q]).astype(np.int64))
           if text_q else np.zeros((0, spec.embed_dim))}
    with TritonEmbedder(ClientConfig(url=url, timeout_s=60.0)) as emb:
        def served(results) -> np.ndarray:
            bad = [r.error for r in results if not r.ok]
            if bad:
                raise RuntimeError(f"the server refused {len(bad)} inputs, e.g. {bad[0]}")
            return np.stack([r.embedding for r in results]).astype(np.float32) if results else np.zeros((0, spec.embed_dim))
        got = {"keys": served(emb.embed_images(images)), "image": served(emb.embed_images(q_images)),
               "text": served(emb.embed_texts([q.text for q in text_q]))}
    cos = np.concatenate([row_cosines(ref[k], got[k]) for k in ref if len(ref[k])])
    rel = [q.relevance for q in text_q] + [q.relevance for q in image_q]

    def recall(side: dict[str, np.ndarray]) -> float:
        return _recall(np.concatenate([side["text"], side["image"]]), side["keys"], ids, rel) if rel else 0.0

    r32, rv = recall(ref), recall(got)
    delta = round(100.0 * (r32 - rv), 4)
    return FidelityRecord(
        variant=variant, base_model_hash=manifest.model_hash, catalog=str(catalog_path), n_products=len(rows),
        n_queries=len(rel), min_cosine=round(float(cos.min()), 9), mean_cosine=round(float(cos.mean()), 9),
        recall_at_10_fp32=round(r32, 4), recall_at_10_variant=round(rv, 4), recall_at_10_delta_pt=delta,
        max_recall_delta_pt=MAX_RECALL_DELTA_PT, min_cosine_bound=MIN_COSINE,
        passed=delta <= MAX_RECALL_DELTA_PT and float(cos.min()) >= MIN_COSINE, runtime=runtime)


# -- report --------------------------------------------------------------------------------------


def markdown(report: reporting.Report, d: dict[str, Any]) -> None:
    r = d["runtime"]
    report.add(f"Runtime: **{r['runtime']}** on {r['device']} — {r['reason']}. Model {d['model']['architecture']} "
               f"`{d['model']['name']}` ({d['model']['weights']}, hash {d['model']['hash']}); image preprocessing: "
               f"{d['image_preprocess']}.")
    report.add("Steps (s): " + ", ".join(f"{k} {v}" for k, v in d["steps_s"].items()) + f"; budget {d['budget_s']} s.")
    if d["skipped"]:
        report.add(f"Skipped for the time budget: {len(d['skipped'])} points (" + ", ".join(
            f"{s['model']} b{s['batch']} c{s['concurrency']}" for s in d["skipped"][:8]) + ").")
    report.add("## Served load\n\n" + reporting.table(
        ["model", "batch", "concurrency", "tool", "items/s", "p50 ms", "p99 ms", "note"],
        [(p["model"], p["batch"], p["concurrency"], p.get("tool"), p.get("throughput"), p.get("p50_ms"), p.get("p99_ms"),
          p.get("error") or p.get("first_error") or ("" if p.get("stable", True) else "unstable"))
         for p in d["points"]]))
    report.add("## In-process baseline (image tower, same runner, no server)\n\n" + reporting.table(
        ["batch", "device", "precision", "CUDA graphs", "images/s", "p50 ms", "p99 ms"],
        [(b["batch"], b["device"], b["precision"], b["cuda_graphs"], b["images_per_s"], b["p50_ms"], b["p99_ms"])
         for b in d["inprocess"]]))
    f = d["fidelity"]
    report.add("## Fidelity gate (served vs fp32 ONNX on CPU)\n\n" + (reporting.table(
        ["variant", "products", "queries", "min cos", "mean cos", "R@10 fp32", "R@10 served", "delta pt", "passed"],
        [(f["variant"], f["n_products"], f["n_queries"], f["min_cosine"], f["mean_cosine"], f["recall_at_10_fp32"],
          f["recall_at_10_variant"], f["recall_at_10_delta_pt"], f["passed"])], digits=6) if f else "not run"))


def plot(d: dict[str, Any]):
    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, len(LOAD_MODELS), figsize=(5 * len(LOAD_MODELS), 3.6))
    for ax, model in zip(np.atleast_1d(axes), LOAD_MODELS):
        for b in sorted({p["batch"] for p in d["points"]}):
            pts = [p for p in d["points"] if p["model"] == model and p["batch"] == b and p.get("throughput")]
            if pts:
                ax.plot([p["throughput"] for p in pts], [p["p50_ms"] for p in pts], marker="o", label=f"batch {b}")
        ax.set_title(model)
        ax.set_xlabel("items/s")
        ax.set_ylabel("p50 ms")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    steps: dict[str, float] = {}
    report = reporting.Report("gpu_check", args.out, argv)
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    device = _device(args.device)
    choice = gpu_runtimes.choose(args.runtime, device, args.tritonserver)
    print(f"runtime: {choice.runtime} on {choice.device} ({choice.reason})")

    t = time.monotonic()
    from lenscope.export.pipeline import export_model

    onnx_dir, base = workdir / "onnx", workdir / "repo-base"
    manifest = export_model(spec_path=args.spec, out=base, onnx_dir=onnx_dir, log=lambda m: print(f"  export: {m}"))
    traced = gpu_runtimes.trace_towers(Path(args.spec), workdir / "torchscript")
    steps["export"] = round(time.monotonic() - t, 1)
    catalog = stack.ensure_catalog(workdir / f"catalog-{args.products}", args.products, seed=0)
    images, titles = pa.load_inputs(catalog.parent, 64)
    data = pa.write_input_data(workdir / "input-data", images, titles)
    size = manifest.spec.preprocess.image_size

    t = time.monotonic()
    preprocess_note = "python (Pillow, CPU)"
    if choice.runtime == "tensorrt":
        repo, note = gpu_runtimes.write_tensorrt_repository(base, workdir / "repo-gpu", workdir)
        preprocess_note = f"{note.get('backend')}" + (f" ({note['reason']})" if note.get("reason") else "")
        server = gpu_runtimes.NgcServer(choice.tritonserver, repo, workdir / "tritonserver.log")
        try:
            server.wait_ready(args.ready_timeout_s)
        except BaseException:
            server.stop()
            raise
    else:
        from lenscope.client.triton.server import start_server

        repo = gpu_runtimes.write_torch_repository(base, workdir / "repo-torch", traced, choice.device, tuple(args.batches))
        server = start_server(repo, log_path=workdir / "tritonserver.log", ready_timeout=args.ready_timeout_s)
    steps["serve"] = round(time.monotonic() - t, 1)
    print(f"serving {repo} at {server.grpc_url} (pid {server.pid}), ready after {steps['serve']} s")

    points: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    record = None
    try:
        t = time.monotonic()
        binary, env, tool_note = None, {}, "project client (--no-perf-analyzer)"
        if not args.no_perf_analyzer:
            try:
                binary, env = pa.perf_analyzer()
                tool_note = f"perf_analyzer {binary}"
            except Exception as err:  # noqa: BLE001 - offline or no binary: say so, measure with our client
                tool_note = f"project client (perf_analyzer unavailable: {err})"
        print(f"load tool: {tool_note}")
        for model in LOAD_MODELS:
            for b in args.batches:
                for c in args.concurrency:
                    point = {"model": model, "batch": b, "concurrency": c}
                    if time.monotonic() - t_start > args.budget_s:
                        skipped.append(point)
                        continue
                    if binary is not None:
                        r = pa_point(binary, env, server.grpc_url, model, b, c, data.get(model), args.window_ms,
                                     args.max_trials, workdir / f"pa-{model}-b{b}-c{c}.csv")
                    else:
                        r = client_point(server.grpc_url, model, b, c, args.window_ms / 1000 * 2, images, titles, size)
                    points.append({**point, **r})
                    print(f"{model} b{b} c{c}: " + (f"{r['throughput']:.0f}/s p50 {r['p50_ms']} ms" if r.get("throughput")
                                                    else f"ERROR {r.get('error') or r.get('first_error')}"))
        steps["load"] = round(time.monotonic() - t, 1)

        t = time.monotonic()
        variant = {"tensorrt": "tensorrt-fp16", "torch": "torch-fp16"}[choice.runtime] if choice.device == "cuda" else "fp32"
        runtime_desc = (f"{choice.runtime} on {choice.device} via tritonserver"
                        + (f", preprocessing {preprocess_note}" if choice.runtime == "tensorrt" else ""))
        record = fidelity(server.grpc_url, onnx_dir, catalog, variant, runtime_desc)
        steps["fidelity"] = round(time.monotonic() - t, 1)
        print(f"fidelity: min cos {record.min_cosine}, R@10 {record.recall_at_10_fp32} -> {record.recall_at_10_variant} "
              f"({record.recall_at_10_delta_pt} pt): {'PASSED' if record.passed else 'FAILED'}")
        if choice.device == "cuda":
            from lenscope.export.precision import record as write_record

            write_record(onnx_dir, record)
    finally:
        server.stop()

    t = time.monotonic()
    inproc = inprocess_baseline(traced[contract.IMAGE_ENCODER], choice.device, args.batches, size,
                                seconds=0.5 if args.smoke else 3.0)
    steps["inprocess"] = round(time.monotonic() - t, 1)
    report.data.update({
        "runtime": {"runtime": choice.runtime, "device": choice.device, "reason": choice.reason, "load_tool": tool_note},
        "model": {"name": manifest.spec.name, "architecture": manifest.spec.architecture, "hash": manifest.model_hash,
                  "weights": manifest.weights},
        "image_preprocess": preprocess_note, "steps_s": steps, "budget_s": args.budget_s,
        "batches": args.batches, "concurrency": args.concurrency,
        "points": points, "skipped": skipped, "inprocess": inproc,
        "fidelity": record.model_dump() if record else None,
    })
    report.publish(markdown, plot)
    return 0 if record is not None and record.passed else 3


if __name__ == "__main__":
    raise SystemExit(main())
