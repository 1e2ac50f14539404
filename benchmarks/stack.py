"""Bringing up the pieces a benchmark measures, the way a deployment runs them, on 127.0.0.1 only.

* model repositories: the default spec exported (and verified) once, then re-written with other serving
  settings (dynamic batching, instance counts) from the SAME ONNX graphs, so configs differ in nothing
  but their ``config.pbtxt``;
* a catalog (``lenscope.client.synth.catalog``), an index built through Triton's ensembles;
* the search service as its own process (``lenscope serve search``), so its RSS is its own;
* RSS of a process tree read from ``/proc`` (tritonserver plus its python-backend stubs).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lenscope.client.core import contract

# ------------------------------------------------------------------------------------------------
# Model repositories
# ------------------------------------------------------------------------------------------------


def _export_is_current(out: Path, spec_path: Path) -> bool:
    """``out`` holds an export of ``spec_path`` as it is now (same spec, same checkpoint bytes)."""
    import hashlib

    from lenscope.client.core.manifest import load_manifest
    from lenscope.client.core.modelspec import load_spec, resolve_checkpoint
    from lenscope.export.repository import RepositorySettings

    try:
        manifest = load_manifest(out)
        spec = load_spec(spec_path)
    except Exception:  # noqa: BLE001 - unreadable = not current
        return False
    if manifest.spec != spec:
        return False
    # Exported with other serving settings (an older default layout, e.g. the cpu ensemble before the
    # fused models): a benchmark of "the shipped settings" must not measure it.
    if (manifest.extras or {}).get("repository_settings") != RepositorySettings().model_dump(mode="json"):
        return False
    ckpt = resolve_checkpoint(spec, spec_path.parent)
    if ckpt is None:
        return manifest.checkpoint is None
    return manifest.checkpoint is not None and manifest.checkpoint.sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()


def export_base(out: Path, spec: Path | None = None, fresh: bool = False, log=print) -> Path:
    """The default (or given) spec exported into ``out`` with default serving settings.

    Reused when ``out`` already holds an export of the same spec and checkpoint with today's default
    serving settings (~13 s saved)."""
    from lenscope.export.pipeline import DEFAULT_SPEC, export_model  # torch only here

    spec_path = Path(spec or DEFAULT_SPEC)
    if fresh or not _export_is_current(out, spec_path):
        export_model(spec_path=spec_path, out=out, log=lambda msg: log(f"  export: {msg}"))
    return out


def onnx_paths(repo: Path) -> dict[str, Path]:
    """model name -> ONNX graph inside a cpu-profile repository."""
    found = {
        contract.IMAGE_ENCODER: repo / contract.IMAGE_ENCODER / "1" / contract.IMAGE_ONNX,
        contract.TEXT_ENCODER: repo / contract.TEXT_ENCODER / "1" / contract.TEXT_ONNX,
        contract.ATTRIBUTE_HEADS: repo / contract.ATTRIBUTE_HEADS / "1" / contract.HEADS_ONNX,
    }
    for name, path in list(found.items()):
        if not path.is_file():
            alt = path.with_name("model.onnx")  # gpu profile layout
            if alt.is_file():
                found[name] = alt
            elif name == contract.ATTRIBUTE_HEADS:
                del found[name]  # a model without attribute heads
            else:
                raise FileNotFoundError(f"{path}: not an exported repository")
    return found


def vocab_path(repo: Path) -> Path:
    return repo / contract.TEXT_TOKENIZER / "1" / contract.BPE_VOCAB_FILE


def write_variant(base: Path, out: Path, settings: Any) -> Path:
    """Re-write ``base``'s repository with other ``RepositorySettings`` (same graphs, same manifest hash)."""
    from lenscope.client.core.manifest import load_manifest
    from lenscope.export.repository import write_repository

    manifest = load_manifest(base)
    extras = {**manifest.extras, "repository_settings": settings.model_dump()}
    manifest = manifest.model_copy(update={"extras": extras})
    # Copy the graphs out first: write_repository replaces `out`, which must not be `base`.
    if out.resolve() == base.resolve():
        raise ValueError("a variant must go to its own directory")
    return write_repository(out, manifest, onnx_paths(base), vocab_path(base), settings)


# ------------------------------------------------------------------------------------------------
# Catalog + index
# ------------------------------------------------------------------------------------------------


def ensure_catalog(root: Path, n_products: int, seed: int = 0) -> Path:
    """``root/catalog.jsonl`` (+ images, queries), generated unless a complete one is there."""
    from lenscope.client.synth.catalog import generate_catalog

    catalog = root / "catalog.jsonl"
    marker = root / f".complete-{n_products}-{seed}"
    if not (catalog.is_file() and marker.is_file()):
        generate_catalog(root, n_products, seed=seed)
        marker.write_text("ok\n")
    return catalog


def ensure_index(catalog: Path, index_root: Path, triton_url: str, model_hash: str, log=print) -> Path:
    """An index bundle for ``catalog`` built through Triton, reused when it matches the served model."""
    from lenscope.client.index.bundle_store import BundleStore
    from lenscope.client.index.job import IndexBuildConfig, build_index
    from lenscope.client.triton.client import ClientConfig, TritonEmbedder

    store = BundleStore(index_root)
    if store.current_version():
        try:
            store.open_current(expected_model_hash=model_hash).close()
            return index_root
        except Exception:  # noqa: BLE001 - anything unusable is rebuilt
            pass
    with TritonEmbedder(ClientConfig(url=triton_url, timeout_s=30.0, max_concurrency=8)) as embedder:
        report = build_index(IndexBuildConfig(catalog=catalog, index_root=index_root, progress=False), embedder)
    log(f"  index: {report.indexed} products at {report.rows_per_s:.0f} rows/s -> {report.bundle_path}")
    return index_root


# ------------------------------------------------------------------------------------------------
# The search service in its own process
# ------------------------------------------------------------------------------------------------


def _lenscope_argv() -> list[str]:
    script = Path(sys.executable).parent / "lenscope"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from lenscope.client.cli.app import app; app()"]


@dataclass
class ServiceProcess:
    """``lenscope serve search`` as a child process on free loopback ports."""

    process: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, index_root: Path, triton_url: str, log_path: Path, *, max_inflight: int | None = None,
              env: dict[str, str] | None = None, ready_timeout_s: float = 60.0) -> "ServiceProcess":
        from lenscope.client.triton.ports import free_ports

        port, metrics_port = free_ports(2)
        child_env = dict(os.environ)
        child_env.update(env or {})
        if max_inflight is not None:
            child_env["LENSCOPE_MAX_INFLIGHT"] = str(max_inflight)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child from here on
        argv = [*_lenscope_argv(), "serve", "search", "--index-root", str(index_root), "--triton", triton_url,
                "--grpc-port", str(port), "--metrics-port", str(metrics_port), "--host", "127.0.0.1"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                env=child_env, start_new_session=True)
        log_file.close()
        service = cls(proc, port, metrics_port, log_path)
        try:
            service.wait_serving(ready_timeout_s)
        except BaseException:
            service.stop()
            raise
        return service

    def wait_serving(self, timeout_s: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"search service exited {self.process.returncode}; log {self.log_path}:\n"
                                       + _tail(self.log_path))
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"search service not SERVING after {timeout_s:.0f} s; log {self.log_path}:\n"
                           + _tail(self.log_path))

    def stop(self, timeout_s: float = 15.0) -> int | None:
        return terminate(self.process, timeout_s)


def terminate(process: subprocess.Popen, timeout_s: float) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout_s``; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------
# Memory of a process tree
# ------------------------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, str]:
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    except OSError:
        pass
    return fields


def rss_bytes(pid: int) -> int:
    value = _proc_status(pid).get("VmRSS", "0 kB").split()
    return int(value[0]) * 1024 if value else 0


def children(pid: int) -> list[int]:
    """Direct and indirect children of ``pid`` (scans /proc: no psutil needed)."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ... ; comm may contain spaces and parentheses
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parent_of[int(entry.name)] = ppid
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parent_of.items() if pp == current]
        found.extend(kids)
        frontier.extend(kids)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (not of its children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its live descendants."""
    return sum(cpu_seconds(p) for p in (pid, *children(pid)))


def tree_rss(pid: int) -> dict[str, int]:
    """RSS in bytes of ``pid`` (key "main") and of each descendant, keyed ``<name>:<pid>``."""
    sizes = {"main": rss_bytes(pid)}
    for child in children(pid):
        name = _proc_status(child).get("Name", "?")
        sizes[f"{name}:{child}"] = rss_bytes(child)
    return sizes


# ------------------------------------------------------------------------------------------------
# The whole search path: Triton + index + service process
# ------------------------------------------------------------------------------------------------


@dataclass
class SearchStack:
    triton: Any  # lenscope.client.triton.server.TritonServer
    service: ServiceProcess
    catalog_root: Path
    index_root: Path
    repo: Path
    model_hash: str
    setup_seconds: float

    def restart_service(self, max_inflight: int, log_path: Path, env: dict[str, str] | None = None) -> ServiceProcess:
        """Another service process on the same Triton and index (e.g. another max_inflight, or other
        ``LENSCOPE_*`` settings in ``env``)."""
        return ServiceProcess.start(self.index_root, self.triton.grpc_url, log_path, max_inflight=max_inflight,
                                    env=env)

    def stop(self) -> None:
        try:
            self.service.stop()
        finally:
            self.triton.stop()


def renice_tree(pid: int, niceness: int) -> int:
    """Set the nice value of every thread of ``pid`` and of its descendants (Linux niceness is per
    thread; Triton's python-backend stubs are child processes); returns how many threads were set.
    Used to model a deployment where Triton and the search service do not share CPU (see load.py)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    count, todo = 0, [pid]
    while todo:
        proc = todo.pop()
        todo.extend(children.get(proc, []))
        try:
            tasks = [int(t.name) for t in Path(f"/proc/{proc}/task").iterdir()]
        except OSError:
            continue
        for tid in tasks:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
                count += 1
            except OSError:  # gone meanwhile, or not permitted (lowering needs privileges)
                pass
    return count


@dataclass
class FrontProcess:
    """The admission front (``python -m lenscope.client.service.front``) in its own process before a service."""

    process: subprocess.Popen
    address: str

    @classmethod
    def start(cls, backend: str, max_inflight: int, log_path: Path, timeout_s: float = 30.0) -> "FrontProcess":
        log_file = open(log_path, "ab")  # noqa: SIM115 - the child writes it until stop()
        proc = subprocess.Popen([sys.executable, "-m", "lenscope.client.service.front", "--backend", backend,
                                 "--listen", "127.0.0.1:0", "--max-inflight", str(max_inflight)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file)
        log_file.close()
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)  # its "ready <port>" line, or a timeout
        line = proc.stdout.readline() if ready else b""
        if not line.startswith(b"ready "):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"admission front did not start (exit {proc.returncode}); see {log_path}")
        return cls(proc, f"127.0.0.1:{int(line.split()[1])}")

    def stop(self) -> int | None:
        code = terminate(self.process, 10.0)
        self.process.stdout.close()
        return code


def start_search_stack(workdir: Path, n_products: int, max_inflight: int, spec: Path | None = None,
                       log=print) -> SearchStack:
    """Export (or reuse) the model, start tritonserver (shipped settings), generate the catalog, build the
    index through Triton, start ``lenscope serve search`` in its own process. The caller ``stop()``s it."""
    from lenscope.client.core.manifest import load_manifest
    from lenscope.client.triton.server import start_server

    from reporting import WORK

    t0 = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    repo = export_base(WORK / "repo-base", spec=spec, log=log)
    model_hash = load_manifest(repo).model_hash
    catalog_root = workdir / f"catalog-{n_products}"
    ensure_catalog(catalog_root, n_products, seed=0)
    triton = start_server(repo, log_path=workdir / "tritonserver.log", ready_timeout=180)
    try:
        log(f"  tritonserver {triton.grpc_url} (pid {triton.pid}, ready in {triton.ready_after_s:.1f} s)")
        index_root = workdir / f"index-{n_products}"
        ensure_index(catalog_root / "catalog.jsonl", index_root, triton.grpc_url, model_hash, log=log)
        service = ServiceProcess.start(index_root, triton.grpc_url, workdir / "search-service.log",
                                       max_inflight=max_inflight)
        log(f"  search service {service.address} (pid {service.pid}, max_inflight {max_inflight})")
    except BaseException:
        triton.stop()
        raise
    return SearchStack(triton, service, catalog_root, index_root, repo, model_hash, time.monotonic() - t0)
