"""Offline tooling for the deployment tests: kustomize rendering, and checkov in a venv of its own.

checkov pins dependencies that conflict with the main lock (numpy 2, packaging 23, networkx 2), so
it lives in its own venv, installed from ``checkov.lock`` beside this file (fully pinned, ``--no-deps``)
into ``<lenscope cache>/checkov/<lock hash>/`` on first use (~25 s, from PyPI) and reused offline after
that. ``LENSCOPE_CHECKOV=/path/to/checkov`` uses an existing binary instead. Prebuild it with
``python tests/deploy/deploy_tools.py checkov-env`` (prints the binary's path).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: also when run as a script
from pinned_venv import pinned_tool  # noqa: E402

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DOCKER = REPO / "docker"
CHECKOV_LOCK = Path(__file__).with_name("checkov.lock")
CHECKOV_ENV = "LENSCOPE_CHECKOV"


class ToolError(RuntimeError):
    pass


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise ToolError("kubectl (with kustomize) is not on PATH: it is part of the machine image")
    return path


def render(kustomization: str) -> list[dict]:
    """`kubectl kustomize k8s/<kustomization>` parsed into objects (None documents dropped)."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(K8S / kustomization)], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise ToolError(f"kubectl kustomize k8s/{kustomization} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc is not None]


def venv_tool(name: str) -> Path:
    """A console script installed next to the running interpreter (the venv need not be activated)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise ToolError(f"{name} is not installed in {path.parent}: run `make setup` (it is in requirements.lock)")
    return path


def checkov() -> Path:
    """Path to a checkov binary, building its pinned venv on first use."""
    return pinned_tool("checkov", CHECKOV_LOCK, CHECKOV_ENV, ToolError)


if __name__ == "__main__":
    if sys.argv[1:] != ["checkov-env"]:
        sys.exit("usage: python tests/deploy/deploy_tools.py checkov-env")
    print(checkov())
