"""Test tools that cannot share the main venv (checkov, pip-audit: conflicting pins) live in their own
venvs, built once from a pinned lock into the lenscope cache and reused; concurrent builders wait on
one file lock, and a half-built venv from an interrupted run is rebuilt."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

_COMPLETE = ".lenscope-complete"


def pinned_tool(name: str, lock: Path, override_env: str, error: type[Exception]) -> Path:
    """Path to `name` from a venv built from `lock` (or the binary named by $override_env)."""
    if os.environ.get(override_env):
        return Path(os.environ[override_env])
    from lenscope.client.triton.install import cache_root

    env = cache_root() / name / hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    binary = env / "bin" / name
    if (env / _COMPLETE).exists():
        return binary
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / ".build.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one builder at a time; the others reuse its result
        if (env / _COMPLETE).exists():
            return binary
        shutil.rmtree(env, ignore_errors=True)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
        proc = subprocess.run(
            [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-deps", "-r", str(lock)],
            capture_output=True, text=True, timeout=900,
        )
        if proc.returncode != 0:
            raise error(f"installing {name} from {lock.name} failed:\n{proc.stdout}\n{proc.stderr}")
        (env / _COMPLETE).write_text(f"built in {time.monotonic() - started:.1f} s\n")
    return binary
