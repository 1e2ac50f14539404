"""A child process's lifetime tied to its parent's: ``kill -9`` of a command that started
tritonserver must not leave the server (and its python-backend stubs) running and holding ports.

Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere the launcher logs that the safeguard is off.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

import structlog

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1


def parent_death_signal() -> Callable[[], None] | None:
    """A preexec function giving the child SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``),
    so ``kill -9`` of the launching command cannot orphan tritonserver (which then stops its
    python-backend stubs itself). The signal follows the *thread* that forks: only set it from the
    main thread, whose end is the process's end; elsewhere (and off Linux) say so and return None."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        log.info("triton.no_parent_death_signal", reason="not Linux or not the main thread")
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        log.info("triton.no_parent_death_signal", reason="prctl unavailable")
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no locks, no logging
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec
