"""The benchmarks reuse an earlier export only when it is what ``lenscope model export`` writes today.

A kept export from before a change of the default serving settings (the cpu ensemble before the fused
models) once made the load and scale reports measure the old layout while saying "shipped settings".
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lenscope.client.core import manifest as manifest_module
from lenscope.client.core.modelspec import load_spec, resolve_checkpoint
from lenscope.export.pipeline import DEFAULT_SPEC
from lenscope.export.repository import RepositorySettings

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench_stack():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("bench_stack_under_test", BENCHMARKS / "stack.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def _kept(monkeypatch: pytest.MonkeyPatch, repository_settings: dict | None) -> None:
    """An earlier export of the default spec and checkpoint, with these serving settings."""
    spec_path = Path(DEFAULT_SPEC)
    spec = load_spec(spec_path)
    ckpt = resolve_checkpoint(spec, spec_path.parent)
    checkpoint = None if ckpt is None else SimpleNamespace(sha256=hashlib.sha256(ckpt.read_bytes()).hexdigest())
    extras = {} if repository_settings is None else {"repository_settings": repository_settings}
    kept = SimpleNamespace(spec=spec, checkpoint=checkpoint, extras=extras)
    monkeypatch.setattr(manifest_module, "load_manifest", lambda _out: kept)


def test_an_export_with_todays_default_settings_is_reused(bench_stack, monkeypatch, tmp_path):
    _kept(monkeypatch, RepositorySettings().model_dump(mode="json"))
    assert bench_stack._export_is_current(tmp_path, Path(DEFAULT_SPEC))


@pytest.mark.parametrize("settings", [
    RepositorySettings(cpu_embed="ensemble").model_dump(mode="json"),  # the layout before the fused default
    RepositorySettings(embed_instances=1).model_dump(mode="json"),
    None,  # an export too old to record its settings
])
def test_an_export_with_other_serving_settings_is_redone(bench_stack, monkeypatch, tmp_path, settings):
    _kept(monkeypatch, settings)
    assert not bench_stack._export_is_current(tmp_path, Path(DEFAULT_SPEC))
