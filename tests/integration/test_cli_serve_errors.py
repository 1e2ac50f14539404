"""`lenscope serve search` against a real tritonserver and a real index whose bundle was damaged:
one message naming the damage and a hint (exit 2), never a traceback and never a service that
starts on a broken index. Run as a subprocess with a timeout: a damage that went unnoticed would
leave the service running."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lenscope.client.index.bundle import MANIFEST_FILE, METADATA_FILE
from lenscope.client.index.bundle_store import BundleStore

pytestmark = pytest.mark.integration
N = 40  # the catalog/index of test_browser.py (make_index caches per (n, seed))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "flipped-byte-in-metadata": (lambda v: _flip_byte(v / METADATA_FILE), METADATA_FILE),
    "truncated-metadata": (lambda v: _truncate(v / METADATA_FILE), METADATA_FILE),
    "missing-bundle-json": (lambda v: (v / MANIFEST_FILE).unlink(), MANIFEST_FILE),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_serve_search_on_a_damaged_bundle_is_one_message(damage: str, make_index, triton, tmp_path: Path) -> None:
    _, index_root = make_index(N, 11)
    root = tmp_path / "index"
    shutil.copytree(index_root, root, symlinks=True)
    version = root / "versions" / BundleStore(root).current_version()
    damage_fn, named = DAMAGE[damage]
    damage_fn(version)
    proc = subprocess.run(
        [sys.executable, "-m", "lenscope.client.cli", "serve", "search", "--index-root", str(root),
         "--triton", triton.grpc_url, "--grpc-port", "0", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out and named in out, out
    assert "hint: rebuild it with 'lenscope index build" in out, out
