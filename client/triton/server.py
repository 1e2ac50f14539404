"""Run one tritonserver process: its command line (:class:`TritonServerConfig`), the process
itself (:class:`TritonServer`: start, health-check, stop) and :func:`start_server`, which starts one
on free ports and waits until it is ready.

The binary, its backend directory and environment come from :mod:`lenscope.client.triton.install`.
Readiness is checked over HTTP (``/v2/health/ready``) with urllib: this module imports neither
``torch`` nor ``tritonclient``, so the serving side and test fixtures can use it anywhere.

About 460 lines: the config, the process and ``start_server`` change together (a config
field is an argument the process passes and a port ``start_server`` picks), so they stay one module.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import os
import re
import secrets
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Callable, Literal

import structlog
from tenacity import retry_if_exception_type

from lenscope.client.core.retry import RetryPolicy
from lenscope.client.triton.errors import TritonServerError
from lenscope.client.triton.install import locate_triton, prepare_backend_directory, server_environment
from lenscope.client.triton.lifetime import with_parent_death_signal
from lenscope.client.triton.ports import free_ports

log = structlog.get_logger(__name__)

_POLL_INTERVAL_S = 0.05
_LOG_TAIL_LINES = 400
# Lines only the process we started writes once it has bound its own ports: readiness must be this
# server's, not another tritonserver answering on the same address.
_STARTED = {"http": re.compile(r"Started HTTPService at"), "grpc": re.compile(r"Started GRPCInferenceService at")}
_BIND_FAILURE = re.compile(r"(address already in use|failed to (start|bind)|Socket '.*' already in use)", re.I)
_RESTRICTED_PROTOCOL = re.compile(r"^[a-z-]+(,[a-z-]+)*:[^=\s]+=\S+$")
_ADMIN_KEY = re.compile(r"^[A-Za-z0-9._-]{8,128}$")
# The admin surface locked by default, and the header that unlocks it (Triton's restricted-API syntax).
ADMIN_APIS = ("model-repository", "logging", "trace", "shared-memory")
ADMIN_HEADER = "lenscope-triton-admin-key"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


ModelControlMode = Literal["none", "poll", "explicit"]


@dataclasses.dataclass(frozen=True)
class TritonServerConfig:
    """Everything that decides the tritonserver command line; validated on construction."""

    model_repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    strict_readiness: bool = True
    # Triton's shutdown budget, shared by its phases (open HTTP connections, in-flight requests,
    # live models), each polled once a second; unloading a python model alone takes ~1 s. When it
    # runs out, Triton exits with code 1, so values below ~5 turn clean shutdowns into failures.
    exit_timeout_secs: int = 10
    log_verbose: int = 0
    model_control_mode: ModelControlMode = "none"
    # Only with model_control_mode="explicit": models loaded at startup ("*" for all).
    load_models: tuple[str, ...] = ()
    # e.g. "model-repository,shared-memory:lenscope-admin-key=SECRET" (Triton's syntax). When given, it
    # replaces the default gRPC admin lock below (the caller chose which protocols need which key).
    grpc_restricted_protocol: str | None = None
    # Triton's admin APIs (model load/unload, logging, trace settings, shared-memory registration) answer
    # only requests carrying the header ADMIN_HEADER=<admin_key>, over gRPC and HTTP. A fresh random key
    # per server unless one is given, so by default nobody can use them; open_admin=True turns the lock
    # off (documented opt-out for a trusted network). Inference, health, metadata, model config and
    # statistics stay open: the search service and perf_analyzer need no key.
    admin_key: str | None = None
    open_admin: bool = False
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_repository", Path(self.model_repository))
        if self.admin_key is None and not self.open_admin:
            object.__setattr__(self, "admin_key", secrets.token_urlsafe(24))
        if self.admin_key is not None and not _ADMIN_KEY.match(self.admin_key):
            raise ValueError("admin_key: 8-128 characters of letters, digits, '-', '_', '.' (it travels as a header)")
        object.__setattr__(self, "load_models", tuple(self.load_models))
        object.__setattr__(self, "extra_args", tuple(self.extra_args))
        if not self.model_repository.is_dir():
            raise ValueError(f"model_repository: {self.model_repository} is not a directory")
        ports = {"http_port": self.http_port, "grpc_port": self.grpc_port, "metrics_port": self.metrics_port}
        for name, port in ports.items():
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"{name}: {port!r} is not a TCP port in 1..65535")
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"http_port, grpc_port, metrics_port must differ: {ports}")
        if self.exit_timeout_secs < 0:
            raise ValueError(f"exit_timeout_secs: {self.exit_timeout_secs} must be >= 0")
        if self.log_verbose < 0:
            raise ValueError(f"log_verbose: {self.log_verbose} must be >= 0")
        if self.model_control_mode not in ("none", "poll", "explicit"):
            raise ValueError(
                f"model_control_mode: {self.model_control_mode!r} is not one of none, poll, explicit"
            )
        if self.load_models and self.model_control_mode != "explicit":
            raise ValueError("load_models: only valid with model_control_mode='explicit'")
        if self.grpc_restricted_protocol is not None and not _RESTRICTED_PROTOCOL.match(
            self.grpc_restricted_protocol
        ):
            raise ValueError(
                "grpc_restricted_protocol: expected '<protocol>[,<protocol>...]:<header>=<value>', "
                f"got {self.grpc_restricted_protocol!r}"
            )

    @property
    def connect_host(self) -> str:
        """Where a local client connects (wildcard listen addresses are reached via loopback)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    def expected_models(self) -> tuple[str, ...] | None:
        """The models this server must serve to count as ready: every ``<name>/config.pbtxt`` of the
        repository (``none``/``poll``), or ``load_models`` (``explicit``; ``*`` = all); None when
        ``explicit`` loads nothing at startup (models arrive later, through the API)."""
        if self.model_control_mode == "explicit" and "*" not in self.load_models:
            return self.load_models or None
        return tuple(sorted(p.parent.name for p in self.model_repository.glob("*/config.pbtxt")))

    def arguments(self, backend_directory: Path, cache_directory: Path | None = None) -> list[str]:
        """tritonserver's arguments (without the binary itself)."""
        b = lambda v: "true" if v else "false"  # noqa: E731
        args = [
            f"--model-repository={self.model_repository.resolve()}",
            f"--backend-directory={backend_directory}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-on-error=true",
            f"--strict-readiness={b(self.strict_readiness)}",
            f"--exit-timeout-secs={self.exit_timeout_secs}",
            f"--log-verbose={self.log_verbose}",
            f"--model-control-mode={self.model_control_mode}",
        ]
        if cache_directory is not None:
            args.append(f"--cache-directory={cache_directory}")
        args += [f"--load-model={name}" for name in self.load_models]
        lock = None if self.open_admin else f"{','.join(ADMIN_APIS)}:{ADMIN_HEADER}={self.admin_key}"
        if self.grpc_restricted_protocol is not None:
            args.append(f"--grpc-restricted-protocol={self.grpc_restricted_protocol}")
        elif lock is not None:
            args.append(f"--grpc-restricted-protocol={lock}")
        if lock is not None:
            args.append(f"--http-restricted-api={lock}")
        args += self.extra_args
        return args


# --------------------------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------------------------

LogSink = Callable[[str], None]

_live_servers: "weakref.WeakSet[TritonServer]" = weakref.WeakSet()


@atexit.register
def _stop_live_servers() -> None:  # never leave a tritonserver behind an exiting interpreter
    for server in list(_live_servers):
        server.stop(timeout=5.0)


class TritonServer:
    """One tritonserver process: ``start()``, ``wait_ready()``, ``stop()``; also a context manager.

    The server runs in its own process group (a Ctrl-C in the terminal reaches only the parent,
    which decides how to stop it). Its combined stdout/stderr is copied line by line to
    ``log_path`` and, if ``log_sink`` is set, to that callable. Without ``log_path`` the log goes
    to a temporary file that is deleted once the server exits with code 0 and kept otherwise
    (error messages name it).
    """

    def __init__(
        self,
        config: TritonServerConfig,
        *,
        log_path: Path | None = None,
        log_sink: LogSink | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.config = config
        self._log_path = Path(log_path) if log_path is not None else None
        self._owns_log = log_path is None  # a temporary log, removed after a clean exit
        self._log_sink = log_sink
        self._cache_dir = cache_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        self._tail_lock = threading.Lock()
        self.started_at: float | None = None
        self.ready_after_s: float | None = None
        self._started_services: set[str] = set()

    # -- properties ---------------------------------------------------------------------------

    def admin_headers(self, transport: Literal["grpc", "http"] = "grpc") -> dict[str, str]:
        """The header that unlocks Triton's admin APIs on this server ({} when they are open). Over gRPC
        Triton expects the header name with its ``triton-grpc-protocol-`` prefix."""
        if self.config.open_admin:
            return {}
        return {(f"triton-grpc-protocol-{ADMIN_HEADER}" if transport == "grpc" else ADMIN_HEADER): str(self.config.admin_key)}

    @property
    def grpc_url(self) -> str:
        return f"{self.config.connect_host}:{self.config.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.connect_host}:{self.config.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.connect_host}:{self.config.metrics_port}/metrics"

    @property
    def urls(self) -> dict[str, str]:
        return {"grpc": self.grpc_url, "http": self.http_url, "metrics": self.metrics_url}

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30, *, tables: bool = False) -> str:
        """The last ``lines`` lines of the server log; without ``tables``, skip the status tables
        (``+---`` / ``| ...`` lines) that would otherwise crowd out the error that matters."""
        with self._tail_lock:
            tail = list(self._tail)
        if not tables:
            tail = [line for line in tail if line.strip() and not line.lstrip().startswith(("+", "|"))]
        return "".join(tail[-lines:])

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "TritonServer":
        """Launch tritonserver (returns at once; call :meth:`wait_ready`)."""
        if self._process is not None:
            raise TritonServerError("this TritonServer was already started")
        if self.config.expected_models() == ():
            raise TritonServerError(
                f"model repository {self.config.model_repository} holds no models (no <name>/config.pbtxt): "
                "a server on it would be 'ready' serving nothing. Export one with "
                f"`lenscope model export --out {self.config.model_repository}`")
        install = locate_triton()
        backend_dir = prepare_backend_directory(install, self._cache_dir)
        argv = [str(install.server_binary), *self.config.arguments(backend_dir, install.caches_dir)]
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(self._log_path, "ab", buffering=0)  # noqa: SIM115 - closed by the reader
        self.started_at = time.monotonic()
        try:
            self._process = subprocess.Popen(
                with_parent_death_signal(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=server_environment(install),
                start_new_session=True,  # own session and process group
                close_fds=True,
            )
        except OSError as exc:
            log_file.close()
            raise TritonServerError(f"could not execute {argv[0]}: {exc}") from exc
        _live_servers.add(self)
        self._reader = threading.Thread(
            target=self._pump_log, args=(self._process.stdout, log_file),
            name=f"tritonserver-log-{self._process.pid}", daemon=True,
        )
        self._reader.start()
        log.info("triton.started", pid=self._process.pid, log=str(self._log_path), **self.urls)
        return self

    def _pump_log(self, stream, log_file) -> None:  # type: ignore[no-untyped-def]
        try:
            for raw in iter(stream.readline, b""):
                log_file.write(raw)
                line = raw.decode("utf-8", "replace")
                with self._tail_lock:
                    self._tail.append(line)
                    self._started_services.update(k for k, rx in _STARTED.items() if rx.search(line))
                if self._log_sink is not None:
                    try:
                        self._log_sink(line)
                    except Exception:  # a broken sink must not stall the server's pipe
                        self._log_sink = None
        finally:
            log_file.close()
            stream.close()

    def _finished(self) -> None:
        """After the process exited: drain the log pipe, forget the server, tidy a temp log."""
        if self._reader is not None:
            self._reader.join(2.0)
        _live_servers.discard(self)
        if self._owns_log and self.returncode == 0 and self.ready_after_s is not None and self._log_path:
            self._log_path.unlink(missing_ok=True)

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Poll until this server is ready; return seconds since :meth:`start`.

        Ready means: our process is alive and has logged that it bound its HTTP and gRPC ports
        (another tritonserver answering on the same ports does not count), ``/v2/health/ready``
        answers 200, and so does ``/v2/models/<name>/ready`` for every expected model.
        Raises :class:`TritonServerError`, with the tail of the server log, if the process exits
        first (e.g. a model fails to load, or a port is taken: the server runs with
        ``--exit-on-error``) or on timeout.
        """
        process = self._require_started()
        url = f"{self.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout
        while True:
            code = process.poll()
            if code is not None:
                self._finished()
                raise TritonServerError(
                    f"tritonserver exited with code {code} before becoming ready "
                    f"(log: {self._log_path}):\n{self.log_tail()}"
                )
            if self._own_ports_bound() and _http_ok(url) and self._models_ready():
                self.ready_after_s = time.monotonic() - (self.started_at or 0.0)
                log.info("triton.ready", pid=process.pid, seconds=round(self.ready_after_s, 3))
                return self.ready_after_s
            if time.monotonic() >= deadline:
                raise TritonServerError(
                    f"tritonserver (pid {process.pid}) not ready after {timeout:.1f}s "
                    f"(log: {self._log_path}):\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL_S)

    def _own_ports_bound(self) -> bool:
        with self._tail_lock:
            return self._started_services >= set(_STARTED)

    def _models_ready(self) -> bool:
        return all(_http_ok(f"{self.http_url}/v2/models/{name}/ready") for name in self.config.expected_models() or ())

    def is_ready(self) -> bool:
        return (self.is_running() and self._own_ports_bound() and _http_ok(f"{self.http_url}/v2/health/ready")
                and self._models_ready())

    def terminate(self) -> None:
        """Ask the server to shut down (SIGTERM), without waiting."""
        if self.is_running():
            assert self._process is not None
            self._process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the server's whole process group (its python-backend stubs included)."""
        if self.is_running():
            assert self._process is not None
            try:  # not yet reaped, so the pid (= process group id) cannot have been reused
                os.killpg(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit; return its exit code (negative: killed by a signal)."""
        code = self._require_started().wait(timeout)
        self._finished()
        return code

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait up to ``timeout`` (default: exit_timeout_secs + 10 s), then SIGKILL.

        Returns the exit code (None if never started). Idempotent.
        """
        if self._process is None:
            return None
        if timeout is None:
            timeout = self.config.exit_timeout_secs + 10.0
        process = self._process
        if process.poll() is None:
            t0 = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("triton.kill", pid=process.pid, after_s=timeout)
                self.kill()
                process.wait()
            log.info("triton.stopped", pid=process.pid, code=process.returncode,
                     seconds=round(time.monotonic() - t0, 3))
        self._finished()
        return process.returncode

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise TritonServerError("tritonserver has not been started")
        return self._process

    def __enter__(self) -> "TritonServer":
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "not started" if self._process is None else (
            "running" if self.is_running() else f"exited {self.returncode}")
        return f"<TritonServer pid={self.pid} {state} grpc={self.grpc_url}>"


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def start_server(
    model_repository: Path,
    *,
    ready_timeout: float = 60.0,
    attempts: int = 3,
    log_path: Path | None = None,
    log_sink: LogSink | None = None,
    cache_dir: Path | None = None,
    **config: object,
) -> TritonServer:
    """Start a server on free ports and wait until it is ready (what a pytest fixture needs).

    Retries with fresh ports when the server fails because a port was taken between choosing it
    and binding it; any other failure raises at once. The caller owns the result: ``stop()`` it,
    or use it as a context manager.
    """
    def attempt() -> TritonServer:
        http, grpc, metrics = free_ports(3)
        cfg = TritonServerConfig(
            model_repository=Path(model_repository),
            http_port=http, grpc_port=grpc, metrics_port=metrics, **config,  # type: ignore[arg-type]
        )
        server = TritonServer(cfg, log_path=log_path, log_sink=log_sink, cache_dir=cache_dir)
        server.start()
        try:
            server.wait_ready(ready_timeout)
            return server
        except TritonServerError as err:
            server.stop()
            if _BIND_FAILURE.search(server.log_tail(lines=40)):
                log.warning("triton.port_clash", ports=[http, grpc, metrics])
                raise _PortClash(str(err)) from err
            raise

    # fresh ports at once (nothing to wait for), on the project's one retry policy
    retrying = RetryPolicy(attempts=attempts, base_delay_s=0.0, max_delay_s=0.0)
    return retrying.retrying(retry_if_exception_type(_PortClash))(attempt)


class _PortClash(TritonServerError):
    """tritonserver could not bind a port chosen free a moment earlier: worth another try."""
