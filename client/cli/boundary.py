"""The CLI's one error boundary: every failure a user can cause becomes one message and exit code 2.

Commands raise; this module decides what the user sees. The project's own errors (any exception
class defined in ``lenscope``), the OS and network failures a careless or hostile input produces
(missing, wrong-type or unreadable paths, ports in use, unreachable servers, bad encodings, bad
JSON, corrupted SQLite) and pydantic validation errors print ``error: <what, naming the file, field,
value or address>`` plus a ``hint:`` of what to run, and exit 2. Anything else is a bug: one line
naming it and a log file holding the traceback, exit 1. Everything printed is literal text with
control characters escaped (:mod:`lenscope.client.cli.terminal`).

It is a ``TyperGroup`` subclass for the root command, so it wraps the sub-commands' option parsing
and bodies alike, in-process (``CliRunner``) as well as from the console script.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import tempfile
import traceback
from typing import Any

import typer
from typer._click.exceptions import ClickException  # typer 0.29 vendors click: its own exception classes
from typer.core import TyperGroup

from lenscope.client.cli.terminal import escape_controls, fail, stderr_console
from rich.text import Text

START_TRITON = "start Triton with 'lenscope serve triton --model-repository model_repository/cpu', or pass --triton HOST:PORT"
REBUILD_INDEX = "rebuild it with 'lenscope index build --catalog CATALOG --index-root DIR'"

# Project error class name -> what to run next. Matched along the class's MRO (so subclasses inherit).
HINTS: dict[str, str] = {
    "OutputRefused": "",
    "CatalogError": "fix the named line and field of the catalog (format: README, 'Search'), then rerun",
    "SpecError": "check the spec path and the named field; export/specs/lenscope-tiny.json is a valid spec",
    "BundleCorrupt": REBUILD_INDEX,
    "ModelVersionMismatch": "the index was built with another model: " + REBUILD_INDEX,
    "BundleError": REBUILD_INDEX,
    "MetadataStoreError": REBUILD_INDEX,
    "IndexFormatError": REBUILD_INDEX,
    "BackendUnavailable": START_TRITON,
    "EmbedderUnavailable": START_TRITON,
    "TritonError": START_TRITON,
    "TritonNotInstalledError": "run 'make setup' (it installs the nvidia-pytriton wheel that ships tritonserver)",
    "TritonServerError": "see the tritonserver log named above",
    "MilvusConnectionError": "start Milvus or check LENSCOPE_MILVUS_* settings (docs/milvus.md)",
    "WorkDirBusy": "wait for the other build of this catalog to finish, then rerun",
    "WeightsError": "fix the file or write a new one with 'lenscope rerank fit'",
    "CalibrationError": "fix the file or write a new one with 'lenscope rerank fit --calibration-out FILE'",
    "FitError": "label more queries or pass --max-queries/--split differently",
    "ServiceStartError": "pick another port (--grpc-port / --metrics-port) or stop the process holding it",
    "PlanMismatch": "rebuild the plans with 'lenscope model build-trt' in the serving image on the serving GPU model",
    "TensorRTUnavailable": "run 'lenscope model build-trt' on a GPU machine with the tensorrt package",
    "PlanBuildError": "run 'lenscope model build-plans' in NVIDIA's Triton image on the serving GPU (trtexec is there)",
    "VerificationError": "the ONNX graphs differ from torch by the numbers above: check the spec and checkpoint",
    "TrainError": "fix the named option or input; 'lenscope model train --help' lists them",
    "EvaluationError": "check the inputs named above; 'lenscope eval --help' lists them",
    "ImageInputError": "give a JPEG, PNG, WebP, GIF, BMP or TIFF photo",
}

_OS_HINTS = {
    errno.ENOENT: "check the path (relative paths start from the current folder)",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "give a folder, not a file",
    errno.EACCES: "check the permissions of the path",
    errno.EPERM: "check the permissions of the path",
    errno.EADDRINUSE: "pick another port or stop the process that holds it",
    errno.EADDRNOTAVAIL: "listen on an address of this machine (e.g. 127.0.0.1 or 0.0.0.0)",
    errno.ECONNREFUSED: "is the server running at that address?",
    errno.ENOSPC: "free some disk space",
    errno.EROFS: "write somewhere writable",
    errno.EINVAL: "a path lenscope manages was replaced by something else (e.g. an index root's 'current' must be "
                  "the symlink 'lenscope index build' writes): " + REBUILD_INDEX,
}


def _hint_for_project_error(err: BaseException) -> str | None:
    for cls in type(err).__mro__:
        if cls.__name__ in HINTS:
            return HINTS[cls.__name__] or None
    return None


def _validation_message(err: Any) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e.get("loc", ())) or "value"
        parts.append(f"{loc}: {e.get('msg')} (got {e.get('input')!r})")
    return f"invalid {err.title}: " + "; ".join(parts)


def _os_message(err: OSError) -> str:
    what = err.strerror or str(err)
    if err.filename is not None:
        target = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else str(err.filename)
        return f"{target}: {what}"
    return what


def describe(err: BaseException) -> tuple[str, str | None] | None:
    """(message, hint) for a failure the user can fix; None for a bug."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        return _validation_message(err), "see the command's --help for the accepted values"
    if type(err).__module__.startswith("lenscope.") and isinstance(err, Exception):
        return str(err) or type(err).__name__, _hint_for_project_error(err)
    if isinstance(err, UnicodeDecodeError):
        return (f"cannot decode text as {err.encoding}: byte 0x{err.object[err.start]:02x} at offset {err.start} "
                f"({err.reason})", "save the file as UTF-8")
    if isinstance(err, json.JSONDecodeError):
        return f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}", "fix the JSON file"
    if isinstance(err, sqlite3.DatabaseError):
        return f"an index database is unreadable: {err}", REBUILD_INDEX
    if isinstance(err, OSError):
        return _os_message(err), _OS_HINTS.get(err.errno or -1)
    if isinstance(err, OverflowError) and "port" in str(err):
        return str(err), "ports are 0-65535"
    try:
        import grpc
    except ImportError:  # pragma: no cover - grpc is a core dependency
        grpc = None  # type: ignore[assignment]
    if grpc is not None and isinstance(err, grpc.RpcError) and hasattr(err, "code"):
        return f"{err.code().name}: {err.details()}", "is the service running at that address?"
    return None


def crash_log(err: BaseException) -> str:
    """Write the traceback to a fresh log file (never an existing one) and return its path."""
    fd, path = tempfile.mkstemp(prefix="lenscope-error-", suffix=".log")
    with open(fd, "w", encoding="utf-8") as f:
        f.write("".join(traceback.format_exception(err)))
    return path


def report(err: BaseException) -> int:
    """Print what went wrong; the exit code (2: fix your input, 1: a bug, 3: interrupted, rerun)."""
    if type(err).__name__ == "IndexBuildInterrupted":
        fail(str(err), 3, "rerun the same command: the build resumes from its checkpoints")
    known = describe(err)
    if known is not None:
        fail(known[0], 2, known[1])
    path = crash_log(err)
    name = type(err).__name__
    stderr_console().print(
        Text.assemble(("error: ", "bold red"), escape_controls(f"unexpected {name}: {err}", keep_newlines=False),
                      f" (a bug in lenscope; the traceback is in {path})"), soft_wrap=True)
    return 1


class BoundaryGroup(TyperGroup):
    """The root `lenscope` group: turns every exception below it into :func:`report`'s one message."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except typer.Exit:
            raise
        except ClickException as err:  # usage errors: click prints them; keep their values literal
            err.message = escape_controls(err.message)
            raise
        except (typer.Abort, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - this is the boundary
            raise typer.Exit(report(err)) from None
