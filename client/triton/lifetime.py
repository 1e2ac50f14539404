"""A child process's lifetime tied to its parent's: ``kill -9`` of a command that started
tritonserver must not leave the server (and its python-backend stubs) running and holding ports.

Linux ``prctl(PR_SET_PDEATHSIG)`` survives ``execve``, so the server is started through a tiny
``python -I -S`` trampoline that arms the signal and then execs the real binary (same pid, same
process group). Not a ``preexec_fn``: that runs Python between ``fork`` and ``exec`` in a process
full of gRPC threads, which aborts or deadlocks (it did: SIGABRT in the fault tests). Off Linux, or
when started from a thread other than the main one (the signal follows the *thread* that forks, so
a worker thread's end would kill a healthy server), the argv is left alone and a log line says so.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import structlog

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1
# argv: <parent pid> <binary> <args...>. If the parent died before prctl took effect, stop at once.
_TRAMPOLINE = (
    "import ctypes, os, sys\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, {int(signal.SIGTERM)}, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    f"    sys.exit(128 + {int(signal.SIGTERM)})\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def with_parent_death_signal(argv: list[str]) -> list[str]:
    """``argv`` wrapped so the started process gets SIGTERM when this process dies (Linux, main
    thread); otherwise ``argv`` unchanged, with a log line saying the safeguard is off."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        log.info("triton.no_parent_death_signal", reason="not Linux or not started from the main thread")
        return argv
    return [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, str(os.getpid()), *argv]
