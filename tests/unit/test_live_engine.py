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
