"""Launch the real Triton Inference Server shipped inside the ``nvidia-pytriton`` wheel.

The wheel carries tritonserver 2.51.0, the python backend and one python-backend stub per Python
version, but not in a layout tritonserver can use directly: the python backend looks for its stub in
``<backend-directory>/python/``, and the copied files no longer find their shared libraries through
their RPATH. This module

1. locates the binary, backend and stub without importing ``pytriton`` (:func:`locate_triton`),
2. prepares a writable backend directory once per wheel build, race-free (:func:`prepare_backend_directory`),
3. builds the environment the server and its stubs need (:func:`server_environment`), and
4. runs, health-checks and stops one server process (:class:`TritonServer`).

Readiness is checked over HTTP (``/v2/health/ready``) with urllib: this module imports neither
``torch`` nor ``tritonclient``, so the serving side and test fixtures can use it anywhere.
"""

from __future__ import annotations

import atexit
import base64
import collections
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Callable, Iterable, Literal

import structlog

log = structlog.get_logger(__name__)

PYTRITON_DISTRIBUTION = "nvidia-pytriton"
INSTALL_HINT = "pip install nvidia-pytriton==0.7.0"
CACHE_ENV = "LENSCOPE_CACHE"

_POLL_INTERVAL_S = 0.05
_LOG_TAIL_LINES = 400
_BIND_FAILURE = re.compile(r"(address already in use|failed to (start|bind)|Socket '.*' already in use)", re.I)
_RESTRICTED_PROTOCOL = re.compile(r"^[a-z-]+(,[a-z-]+)*:[^=\s]+=\S+$")


class TritonServerError(RuntimeError):
    """The server could not be located, prepared, started or made ready."""


class TritonNotInstalledError(TritonServerError):
    """``nvidia-pytriton`` (which ships the tritonserver binary) is not installed."""


# --------------------------------------------------------------------------------------------
# Locating the installation
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TritonInstallation:
    """Paths inside an installed ``nvidia-pytriton`` wheel, for one Python version."""

    version: str
    site_packages: Path
    server_binary: Path
    backends_dir: Path
    python_stub: Path
    libs_dir: Path
    caches_dir: Path
    # Content fingerprint of the files copied into the backend directory: names the cache entry.
    fingerprint: str

    @property
    def python_tag(self) -> str:
        return self.python_stub.parent.name


def _python_version_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def locate_triton() -> TritonInstallation:
    """Find tritonserver, the python backend and this interpreter's stub in the installed wheel.

    Uses package metadata and ``find_spec`` only; ``pytriton`` itself is never imported.
    """
    tag = _python_version_tag()
    try:
        dist = importlib.metadata.distribution(PYTRITON_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        package_root = Path(str(dist.locate_file("pytriton")))
        version = dist.version
    else:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise TritonNotInstalledError(
                f"tritonserver is not installed in {sys.prefix}: {INSTALL_HINT}"
            )
        package_root = Path(next(iter(spec.submodule_search_locations)))
        version = "unknown"

    root = package_root / "tritonserver"
    site_packages = package_root.parent
    install = TritonInstallation(
        version=version,
        site_packages=site_packages,
        server_binary=root / "bin" / "tritonserver",
        backends_dir=root / "backends",
        python_stub=root / "python_backend_stubs" / tag / "triton_python_backend_stub",
        libs_dir=site_packages / "nvidia_pytriton.libs",
        caches_dir=root / "caches",
        fingerprint="",
    )
    missing = [
        p
        for p in (install.server_binary, install.backends_dir / "python", install.libs_dir)
        if not p.exists()
    ]
    if missing:
        raise TritonNotInstalledError(
            f"incomplete nvidia-pytriton {version} installation (missing {', '.join(map(str, missing))}): "
            f"{INSTALL_HINT}"
        )
    if not install.python_stub.exists():
        have = sorted(p.name for p in install.python_stub.parent.parent.iterdir())
        raise TritonNotInstalledError(
            f"nvidia-pytriton {version} has no python backend stub for Python {tag} "
            f"(available: {', '.join(have)})"
        )
    return dataclasses.replace(install, fingerprint=_fingerprint(install, dist))


def _fingerprint(install: TritonInstallation, dist: importlib.metadata.Distribution | None) -> str:
    """Short content hash of what gets copied, from the wheel's RECORD (no file reads needed)."""
    wanted = {install.python_stub, *(p for p in install.backends_dir.rglob("*") if p.is_file())}
    wanted = {p for p in wanted if "__pycache__" not in p.parts}
    recorded: dict[Path, str] = {}
    if dist is not None:
        for f in dist.files or ():
            if f.hash is not None:
                recorded[Path(str(dist.locate_file(f)))] = f.hash.value
    digest = hashlib.sha256()
    for path in sorted(wanted):
        rel = path.relative_to(install.site_packages).as_posix()
        value = recorded.get(path)
        if value is None:  # not in RECORD (or no metadata): hash the file itself
            value = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()
        digest.update(f"{rel}={value}\n".encode())
    return digest.hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Writable backend directory
# --------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$LENSCOPE_CACHE``, else ``$XDG_CACHE_HOME/lenscope``, else ``~/.cache/lenscope``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lenscope"


_READY_MARKER = ".lenscope-complete"


def prepare_backend_directory(
    install: TritonInstallation | None = None, cache_dir: Path | None = None
) -> Path:
    """Return a backend directory holding the python backend plus this Python's stub.

    Built once per wheel build and Python version under ``<cache>/triton-backends/``; the copy is
    assembled in a temporary sibling and renamed into place, so concurrent callers either see a
    complete directory or none, and the loser of a race just discards its copy.
    """
    install = install or locate_triton()
    parent = (cache_dir or cache_root()) / "triton-backends"
    target = parent / f"{install.version}-py{install.python_tag}-{install.fingerprint}"
    if (target / _READY_MARKER).is_file():
        return target
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    try:
        built = staging / "backends"
        shutil.copytree(
            install.backends_dir, built, ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy2(install.python_stub, built / "python" / "triton_python_backend_stub")
        (built / _READY_MARKER).write_text(
            f"nvidia-pytriton {install.version}\nsource {install.backends_dir}\n"
            f"stub {install.python_stub}\n"
        )
        if (target.exists() or target.is_symlink()) and not (target / _READY_MARKER).is_file():
            # Left half-made by something other than this function (we never rename incomplete
            # copies): move it aside rather than trusting or deleting it under another process.
            target.rename(staging / "stale")
        try:
            os.rename(built, target)
        except OSError:
            if not (target / _READY_MARKER).is_file():
                raise
            # Another process won the race with an identical copy.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.debug("triton.backend_directory.prepared", path=str(target))
    return target


def server_environment(
    install: TritonInstallation, base: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment for tritonserver and the python-backend stubs it spawns.

    - ``LD_LIBRARY_PATH``: this interpreter's LIBDIR (the stub links ``libpython3.X.so``; without it
      the system's libpython would be picked) and the wheel's ``nvidia_pytriton.libs`` (the copied
      backend's RPATH no longer resolves).
    - ``PATH``: this environment's ``bin/`` first, so the stub finds this venv's ``python3`` and
      models see its installed packages (``PYTHONPATH`` does not work for the stub).
    """
    env = dict(os.environ if base is None else base)
    lib_paths = [sysconfig.get_config_var("LIBDIR") or "", str(install.libs_dir)]
    lib_paths += env.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(_dedupe(p for p in lib_paths if p))
    bin_dir = str(Path(sys.executable).parent)  # unresolved: the venv's bin, not the base Python's
    env["PATH"] = os.pathsep.join(_dedupe([bin_dir, *env.get("PATH", "").split(os.pathsep)]))
    env.pop("PYTHONHOME", None)
    return env


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS considers free right now (bind to port 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports (all sockets held open together, so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


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
    # e.g. "model-repository,shared-memory:lenscope-admin-key=SECRET" (Triton's syntax).
    grpc_restricted_protocol: str | None = None
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_repository", Path(self.model_repository))
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
        if self.grpc_restricted_protocol is not None:
            args.append(f"--grpc-restricted-protocol={self.grpc_restricted_protocol}")
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

    # -- properties ---------------------------------------------------------------------------

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
                argv,
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
        """Poll ``/v2/health/ready`` until it answers 200; return seconds since :meth:`start`.

        Raises :class:`TritonServerError`, with the tail of the server log, if the process exits
        first (e.g. a model fails to load: the server runs with ``--exit-on-error``) or on timeout.
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
            if _http_ok(url):
                self.ready_after_s = time.monotonic() - (self.started_at or 0.0)
                log.info("triton.ready", pid=process.pid, seconds=round(self.ready_after_s, 3))
                return self.ready_after_s
            if time.monotonic() >= deadline:
                raise TritonServerError(
                    f"tritonserver (pid {process.pid}) not ready after {timeout:.1f}s "
                    f"(log: {self._log_path}):\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL_S)

    def is_ready(self) -> bool:
        return self.is_running() and _http_ok(f"{self.http_url}/v2/health/ready")

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
    for attempt in range(1, attempts + 1):
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
        except TritonServerError:
            server.stop()
            if attempt < attempts and _BIND_FAILURE.search(server.log_tail(lines=40)):
                log.warning("triton.port_clash_retry", attempt=attempt)
                continue
            raise
    raise AssertionError("unreachable")
