"""LiveEngine's swap and drain rules with stand-in engines (pure logic; the real switch under load
through tritonserver and gRPC is tests/integration/test_live_index.py)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from lenscope.client.search.live import LiveEngine


class FakeEngine:
    def __init__(self, version: str) -> None:
        self.index_version = version
        self.model_hash = "m"
        self.embedder = SimpleNamespace(close=lambda: None)
        self.settings = None
        self.closed = False
        self.bundle = SimpleNamespace(close=lambda: None, manifest=SimpleNamespace(counts=SimpleNamespace(products=1)))
        self.entered = threading.Event()
        self.release = threading.Event()

    def search(self, query):
        self.entered.set()
        self.release.wait(5)
        return self.index_version

    def close(self) -> None:
        self.closed = True


def test_old_version_is_released_only_after_its_queries_drain(tmp_path) -> None:
    old, new = FakeEngine("v1"), FakeEngine("v2")
    live = LiveEngine(old, str(tmp_path), poll_s=0)
    answers: list[str] = []
    t = threading.Thread(target=lambda: answers.append(live.search(None)))
    t.start()
    assert old.entered.wait(5)
    live._swap(new, 0.0)
    assert live.index_version == "v2"
    assert not old.closed, "closed under a running query"
    old.release.set()
    t.join(5)
    assert answers == ["v1"], "a query started on v1 must be answered by v1"
    assert old.closed
    new.release.set()
    assert live.search(None) == "v2" and not new.closed
    assert live.index_status().switched == 1


def test_idle_old_version_is_released_at_once(tmp_path) -> None:
    old, new = FakeEngine("v1"), FakeEngine("v2")
    live = LiveEngine(old, str(tmp_path), poll_s=0)
    live._swap(new, 0.0)
    assert old.closed and not new.closed


def test_nothing_published_is_no_switch(tmp_path) -> None:
    live = LiveEngine(FakeEngine("v1"), str(tmp_path), poll_s=0)
    assert live.check_for_update() is None and live.index_version == "v1"


def _published(tmp_path, version: str) -> None:
    (tmp_path / "versions" / version).mkdir(parents=True)
    link = tmp_path / "current"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(f"versions/{version}")


def test_a_version_is_opened_with_the_hash_serving_allows_and_the_backend_it_is_set_to(tmp_path, monkeypatch) -> None:
    """As at start-up: an fp16 variant with a passed fidelity record serves its fp32 model's index, and
    a version built with another vector backend than the service is set to is rejected (old kept)."""
    from lenscope.client.search import live as live_module

    opened: list[str] = []
    built_with = {"v2": "milvus", "v3": "faiss"}

    def fake_open_bundle(path, *, expected_model_hash, index_options=None):
        opened.append(expected_model_hash)
        return SimpleNamespace(close=lambda: None, version=path.name,
                               manifest=SimpleNamespace(index_backend=built_with[path.name]))

    monkeypatch.setattr(live_module, "open_bundle", fake_open_bundle)
    monkeypatch.setattr(live_module, "SearchEngine", lambda embedder, bundle, settings: FakeEngine(bundle.version))
    old = FakeEngine("v1")
    old.embedder = SimpleNamespace(close=lambda: None, manifest=lambda: {
        "model_hash": "fp16hash", "variant": "fp16", "base_model_hash": "fp32hash",
        "fidelity": {"fp16": {"base_model_hash": "fp32hash", "passed": True}}})
    live = LiveEngine(old, str(tmp_path), poll_s=0, vector_backend="faiss")
    _published(tmp_path, "v2")
    assert live.check_for_update() is None and live.index_version == "v1"
    status = live.index_status()
    assert status.rejected == 1 and "built with the milvus backend" in status.last_rejected["v2"]
    _published(tmp_path, "v3")
    assert live.check_for_update() == "v3" and live.index_version == "v3"
    assert opened == ["fp32hash", "fp32hash"]
