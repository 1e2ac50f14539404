"""``lenscope serve ...``: run serving processes in the foreground.

``lenscope serve triton`` runs the tritonserver shipped in ``nvidia-pytriton`` on CPU (see
:mod:`lenscope.client.triton.server`), streams its log to stdout, and turns SIGTERM / SIGINT / SIGHUP into a
graceful Triton shutdown, exiting with the server's own exit code: what a container entrypoint or a
process supervisor expects.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Optional

import typer

from lenscope.client.cli.paths import input_file, published_index
from lenscope.client.core.outputs import check_output_file
from lenscope.client.cli.terminal import echo_plain, fail
from lenscope.client.triton.errors import TritonServerError
from lenscope.client.triton.ports import taken_ports
from lenscope.client.triton.server import ADMIN_HEADER, TritonServer, TritonServerConfig

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pydantic import ValidationError

serve_app = typer.Typer(
    help="Run serving processes in the foreground (logs on stdout, SIGTERM stops cleanly).",
    short_help="Run tritonserver, the search service or the web demo.",
    no_args_is_help=True,
    add_completion=False, rich_markup_mode=None,
)


@serve_app.callback()
def _serve() -> None:
    """Run serving processes in the foreground (logs on stdout, SIGTERM stops cleanly)."""


def _exit_code(returncode: int) -> int:
    """A child's exit status as a shell would report it (killed by signal N -> 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


_stdout_lock = threading.Lock()


def _echo(line: str) -> None:
    with _stdout_lock:
        echo_plain(line)


def check_port_free(host: str, port: int, option: str) -> None:
    """Fail with one line, before any work, when `host:port` cannot be listened on (in use, bad address;
    port 0 checks the address only)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except socket.gaierror as err:
            fail(f"host {host!r} is not an address of this machine: {err.strerror}",
                 hint="listen on 127.0.0.1, 0.0.0.0 or an address of this machine (--host / LENSCOPE_HOST)")
        except OSError as err:
            fail(f"{option} {port}: cannot listen on {host}:{port}: {err.strerror}",
                 hint=f"pick another {option} or stop the process that holds the port")
        except (OverflowError, UnicodeError) as err:
            fail(f"{option} {port} / host {host!r}: {err}", hint="ports are 0-65535; hosts are addresses of this machine")


def settings_message(err: "ValidationError", env_prefix: str, known: "Iterable[str]" = ()) -> str:
    """A settings validation error naming the environment variables and the values they held; an unknown
    variable (extra="forbid") is named with the closest real setting."""
    import difflib

    names = [env_prefix.upper() + k.upper() for k in known]
    parts = []
    for e in err.errors():
        name = env_prefix.upper() + "_".join(str(p) for p in e.get("loc", ())).upper()
        if e.get("type") == "extra_forbidden":
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
            parts.append(f"{name} is not a setting" + (f" (did you mean {close[0]}?)" if close else ""))
            continue
        value = "(hidden)" if "token" in name.lower() else repr(e.get("input"))
        parts.append(f"{name}={value}: {e.get('msg')}")
    return "invalid setting " + "; ".join(parts)


def _wait_interruptibly(server: TritonServer) -> int:
    """Wait for tritonserver to exit in short slices. A signal sent to this process may be delivered to
    any of its threads (the log pump, say); a main thread blocked in one long waitpid() is then never
    interrupted and the Python handler never runs, so the server is never asked to stop. Short waits
    return to the interpreter, which runs the pending handler."""
    while True:
        try:
            return server.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue


# The first line tritonserver logs, e.g. `I1205 20:22:52.938392 6258 pinned_memory_manager.cc:283] "..."`.
_TRITON_LOG_LINE = re.compile(rb"^[IWEF]\d{4} \d{2}:\d{2}:\d{2}\.\d+ +\d+ [\w.-]+:\d+\] ")


def _is_tritonserver_log(path: Path) -> bool:
    """A log an earlier `serve triton` left (its first line is tritonserver's): appending to it is ours to do."""
    with open(path, "rb") as f:
        return bool(_TRITON_LOG_LINE.match(f.read(256)))


def _grpc_tls_args(cert: Optional[Path], key: Optional[Path], client_ca: Optional[Path]) -> tuple[str, ...]:
    """Triton 2.51's gRPC SSL flags (names checked against `tritonserver --help`)."""
    if cert is None and key is None and client_ca is None:
        return ()
    if cert is None or key is None:
        raise ValueError("--grpc-tls-cert and --grpc-tls-key go together")
    args = ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
    if client_ca is not None:
        args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={client_ca}"]
    return tuple(args)


@serve_app.command("triton", short_help="Run tritonserver on a model repository until SIGTERM.")
def triton(
    model_repository: Path = typer.Option(
        ..., "--model-repository", exists=True, file_okay=False, dir_okay=True, resolve_path=True,
        help="Triton model repository (as written by `lenscope model export`).",
    ),
    http_port: int = typer.Option(8000, min=1, max=65535, help="HTTP/REST port (also serves /v2/health/ready)."),
    grpc_port: int = typer.Option(8001, min=1, max=65535, help="gRPC port (what the search service talks to)."),
    metrics_port: int = typer.Option(8002, min=1, max=65535, help="Prometheus metrics port (/metrics)."),
    host: str = typer.Option("127.0.0.1", help="Listen address for all three; 0.0.0.0 in a container."),
    log_verbose: int = typer.Option(0, min=0, help="Triton --log-verbose level."),
    exit_timeout_secs: int = typer.Option(
        10, min=0, help="How long Triton waits for in-flight requests on shutdown."
    ),
    ready_timeout: float = typer.Option(120.0, min=1.0, help="Seconds to wait for readiness."),
    model_control_mode: str = typer.Option("none", help="none | poll | explicit"),
    load_model: Optional[list[str]] = typer.Option(
        None, help="With --model-control-mode explicit: model to load at startup (repeatable)."
    ),
    grpc_restricted_protocol: Optional[str] = typer.Option(
        None, help="Triton's '<protocols>:<header>=<value>', e.g. 'model-repository:admin-key=S'."
    ),
    admin_key: Optional[str] = typer.Option(
        None, envvar="LENSCOPE_TRITON_ADMIN_KEY", show_envvar=False,
        help="Key for Triton's admin APIs (header lenscope-triton-admin-key); default: a random one nobody knows.",
    ),
    open_admin: bool = typer.Option(
        False, "--open-admin", help="Leave Triton's admin APIs (load/unload, logging, trace, shared memory) open."
    ),
    log_file: Optional[Path] = typer.Option(
        None, help="Also keep the server log here, appended (default: a temporary file); a new file, an empty "
        "one or an earlier tritonserver log, never a file of yours."
    ),
    grpc_tls_cert: Optional[Path] = typer.Option(None, callback=input_file, help="Serve gRPC over TLS with this certificate (PEM)."),
    grpc_tls_key: Optional[Path] = typer.Option(None, callback=input_file, help="Private key for --grpc-tls-cert (PEM)."),
    grpc_tls_client_ca: Optional[Path] = typer.Option(None, callback=input_file, help="Require client certificates signed by this CA (mutual TLS)."),
) -> None:
    """Run tritonserver (CPU, python backend) on MODEL_REPOSITORY until SIGTERM / SIGINT / SIGHUP."""
    try:
        config = TritonServerConfig(
            model_repository=model_repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            host=host,
            log_verbose=log_verbose,
            exit_timeout_secs=exit_timeout_secs,
            model_control_mode=model_control_mode,  # type: ignore[arg-type]
            load_models=tuple(load_model or ()),
            grpc_restricted_protocol=grpc_restricted_protocol,
            admin_key=admin_key,
            open_admin=open_admin,
            extra_args=_grpc_tls_args(grpc_tls_cert, grpc_tls_key, grpc_tls_client_ca),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc

    if log_file is not None:  # appended to: only a log tritonserver wrote before (a restart), never a user's file
        if log_file.exists() and not log_file.is_file():
            fail(f"--log-file {log_file} is not a regular file (a folder, FIFO or device); the log is appended to a file")
        check_output_file(log_file, "--log-file", _is_tritonserver_log, "a tritonserver log",
                          inputs={"--model-repository": model_repository})
    if config.expected_models() == ():  # the launcher refuses it too; here it is the user's input: exit 2
        fail(f"--model-repository {model_repository} holds no models (no <name>/config.pbtxt): a server on it "
             "would be 'ready' serving nothing", hint=f"export one with 'lenscope model export --out {model_repository}'")
    busy = taken_ports(config.host, {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port})
    if busy:  # checked here, so that "ready" can never come from another server already on these ports
        fail(f"cannot serve on {'; '.join(busy)}", hint="stop what listens there or choose another port with that option")
    server = TritonServer(config, log_path=log_file, log_sink=_echo)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # The handler runs on the main thread, possibly inside _echo holding its lock: write straight
        # to the file descriptor (no lock, no buffered writer) so that a signal can never deadlock.
        if stopping.is_set():  # second signal: stop waiting for a graceful exit
            os.write(sys.stdout.fileno(), f"lenscope: {signal.Signals(signum).name} again, killing tritonserver\n".encode())
            server.kill()
            return
        stopping.set()
        os.write(sys.stdout.fileno(), f"lenscope: {signal.Signals(signum).name} received, stopping tritonserver\n".encode())
        server.terminate()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        try:
            server.start()
        except TritonServerError as exc:
            fail(str(exc), 1)
        if stopping.is_set():  # a signal arrived while launching
            server.terminate()
        try:
            seconds = server.wait_ready(ready_timeout)
        except TritonServerError as exc:
            if stopping.is_set():
                raise typer.Exit(_exit_code(_wait_interruptibly(server))) from exc
            echo_plain(f"lenscope: {exc}\n")
            code = server.stop()
            raise typer.Exit(_exit_code(code) or 1) from exc
        _echo(
            f"lenscope: tritonserver ready in {seconds:.1f}s (pid {server.pid}, log {server.log_path})\n"
            + "".join(f"lenscope:   {name:<8}{url}\n" for name, url in server.urls.items())
            + ("lenscope:   admin APIs (load/unload, logging, trace, shared memory) are OPEN (--open-admin)\n"
               if config.open_admin else
               "lenscope:   admin APIs (load/unload, logging, trace, shared memory) need the header "
               f"{ADMIN_HEADER}: {'your --admin-key' if admin_key else 'a random key (set --admin-key to use them)'}\n")
        )
        raise typer.Exit(_exit_code(_wait_interruptibly(server)))
    finally:
        if server.is_running():  # an unexpected error in this function: do not orphan the server
            server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@serve_app.command("search", short_help="Run the gRPC search service until SIGTERM.")
def search_service(
    index_root: Path = typer.Option(..., "--index-root", exists=True, file_okay=False, help="Index root (from `lenscope index build`)."),
    triton: Optional[str] = typer.Option(
        None, "--triton", help="Triton gRPC: host:port, a comma list of ip:port, or dns:///name:port "
        "(round-robin over every address; default: LENSCOPE_TRITON_URL or 127.0.0.1:8001)."),
    grpc_port: Optional[int] = typer.Option(None, min=0, max=65535, help="gRPC port (default: LENSCOPE_GRPC_PORT or 50051)."),
    metrics_port: Optional[int] = typer.Option(None, min=0, max=65535, help="Prometheus port (default: LENSCOPE_METRICS_PORT or 9464)."),
    host: Optional[str] = typer.Option(None, help="Listen address (default: LENSCOPE_HOST or 127.0.0.1)."),
    triton_ca: Optional[Path] = typer.Option(None, callback=input_file, help="Talk TLS to Triton, trusting this CA (PEM; LENSCOPE_TRITON_CA)."),
    triton_cert: Optional[Path] = typer.Option(None, callback=input_file, help="Client certificate for mutual TLS to Triton (LENSCOPE_TRITON_CERT)."),
    triton_key: Optional[Path] = typer.Option(None, callback=input_file, help="Client key for mutual TLS to Triton (LENSCOPE_TRITON_KEY)."),
    vector_backend: Optional[str] = typer.Option(None, help="auto | faiss | milvus (LENSCOPE_VECTOR_BACKEND; default auto: what the bundle was built with)."),
    milvus_uri: Optional[str] = typer.Option(None, help="Milvus server for a milvus bundle (LENSCOPE_MILVUS_URI); the token comes from LENSCOPE_MILVUS_TOKEN only."),
    rerank_depth: Optional[int] = typer.Option(None, help="Filtered candidates re-ranked per query (LENSCOPE_RERANK_DEPTH, 100)."),
    max_candidates: Optional[int] = typer.Option(None, help="Over-fetch bound of the ANN search (LENSCOPE_MAX_CANDIDATES, 2000)."),
    deadline_fraction: Optional[float] = typer.Option(None, help="Share of the caller's deadline Triton may use (LENSCOPE_TRITON_DEADLINE_FRACTION, 0.8)."),
    index_poll_s: Optional[float] = typer.Option(None, help="How often to look for a newly published index version and switch to it live; 0: only on SIGHUP (LENSCOPE_INDEX_POLL_S, 2)."),
) -> None:
    """Run the gRPC search service (health, reflection, metrics) until SIGTERM / SIGINT.

    It follows --index-root: a version published there (`index build`, `index remove`) is checked
    and served within about --index-poll-s seconds, without a restart; SIGHUP looks at once.

    Every setting is a flag or a LENSCOPE_* variable (docs/search-settings.md lists them); an unknown
    LENSCOPE_* variable is refused.
    """
    from pydantic import ValidationError

    from lenscope.client.search.live import open_live_engine
    from lenscope.client.service.server import serve
    from lenscope.client.service.settings import ENV_PREFIX, ServiceSettings
    from lenscope.client.triton.client import ClientConfig

    flags = {"grpc_port": grpc_port, "metrics_port": metrics_port, "host": host, "triton_url": triton,
             "triton_ca": triton_ca, "triton_cert": triton_cert, "triton_key": triton_key,
             "vector_backend": vector_backend, "milvus_uri": milvus_uri, "rerank_depth": rerank_depth,
             "max_candidates": max_candidates, "triton_deadline_fraction": deadline_fraction,
             "index_poll_s": index_poll_s}
    try:  # LENSCOPE_* values are validated here, before any work; unknown LENSCOPE_* names are refused
        settings = ServiceSettings.from_environment(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as err:
        fail(settings_message(err, ENV_PREFIX, ServiceSettings.model_fields),
             hint="fix the environment variable (or pass the option); docs/search-settings.md lists them")
    published_index(index_root)
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000.0)  # this process only (see the setting)
    check_port_free(settings.host, settings.grpc_port, "--grpc-port")
    check_port_free(settings.host, settings.metrics_port, "--metrics-port")
    tls = {}
    if settings.triton_ca is not None:
        tls = dict(ssl=True, root_certificates=str(settings.triton_ca),
                   certificate_chain=str(settings.triton_cert) if settings.triton_cert else None,
                   private_key=str(settings.triton_key) if settings.triton_key else None)
    # One concurrency model (service/servicer.py): the Triton client pool is sized from max_inflight too.
    client_config = ClientConfig(url=settings.triton_url, timeout_s=settings.triton_timeout_s,
                                 max_concurrency=settings.max_inflight, keepalive_s=settings.triton_keepalive_s,
                                 max_connection_age_s=settings.triton_max_connection_age_s, **tls)
    engine = open_live_engine(settings.triton_url, str(index_root), settings.search_settings(),
                              poll_s=settings.index_poll_s, client_config=client_config,
                              vector_backend=settings.vector_backend, index_options=settings.index_options())
    try:
        running = serve(engine, settings)
    except BaseException:
        engine.close()
        raise
    _echo(f"lenscope: search service on {settings.host}:{running.port} (metrics :{running.metrics_port}), "
          f"model {engine.model_hash}, index {engine.index_version} ({engine.bundle.manifest.index_backend}), "
          f"triton {settings.triton_url}\n")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: engine.reload_now())  # look for a new index version now
    stop.wait()
    running.stop()
    engine.close()
