"""Locate and prepare the Triton Inference Server shipped inside the ``nvidia-pytriton`` wheel.

The wheel carries tritonserver 2.51.0, the python backend and one python-backend stub per Python
version, but not in a layout tritonserver can use directly: the python backend looks for its stub in
``<backend-directory>/python/``, and the copied files no longer find their shared libraries through
their RPATH. This module

1. locates the binary, backend and stub without importing ``pytriton`` (:func:`locate_triton`),
2. prepares a writable backend directory once per wheel build, race-free (:func:`prepare_backend_directory`),
3. builds the environment the server and its stubs need (:func:`server_environment`).

Running the process is :mod:`lenscope.client.triton.server`'s job; this module starts nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterable

import structlog

from lenscope.client.triton.errors import TritonNotInstalledError

log = structlog.get_logger(__name__)

PYTRITON_DISTRIBUTION = "nvidia-pytriton"
INSTALL_HINT = "pip install nvidia-pytriton==0.7.0"
CACHE_ENV = "LENSCOPE_CACHE"


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
