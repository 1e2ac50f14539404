"""The live index: a search backend that follows its index root and switches versions between queries.

`lenscope index build` / `index remove` publish a new version by swapping the root's `current`
link (index/bundle_store.py). `LiveEngine` notices that (a cheap `readlink` every `poll_s`, or at
once on `reload_now()`, which `lenscope serve search` calls on SIGHUP), then, off the request path:

1. opens the new version with every file's SHA-256 checked against its manifest and the model
   hash checked against the model Triton serves now;
2. builds a complete `SearchEngine` on it (title vectors, facet columns, ranking files);
3. swaps one reference. A query takes the engine it runs on when it starts and keeps it to the
   end, so it is answered entirely by one version (its `index_version` names that version);
4. closes the old engine once the last query that took it has finished (drain), never under one.

A version that cannot be served (damaged file, another model, inconsistent counts) is not
switched to: the old one keeps serving, the reason is logged once (`index_version_rejected`) and
counted (`lenscope_index_switches_total{outcome="rejected"}`), and that version is not retried
until `current` points somewhere else. A transient failure (Triton unreachable while checking the
model) is retried at the next poll. Readiness is the served engine's: a switch never makes the
service unready.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from lenscope.client.index.bundle import BundleError, ModelVersionMismatch, open_bundle
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.core.manifest import index_model_hash
from lenscope.client.search.engine import SearchEngine, SearchSettings, require_backend
from lenscope.client.search.models import SearchQuery, SearchResult

_log = structlog.get_logger("lenscope.search.live")

DEFAULT_POLL_S = 2.0


@dataclass
class _Served:
    """One version's engine and how many queries are running on it."""

    engine: SearchEngine
    inflight: int = 0
    retired: bool = False


@dataclass
class LiveStatus:
    """What the metrics and logs report about the live index."""

    version: str
    switched: int = 0
    rejected: int = 0
    last_rejected: dict[str, str] = field(default_factory=dict)  # version -> reason
    last_switch_s: float | None = None  # seconds from noticing a version to serving it


class LiveEngine:
    """A `SearchBackend` over an index root that switches to newly published versions while serving."""

    def __init__(self, engine: SearchEngine, index_root: str, *, poll_s: float = DEFAULT_POLL_S,
                 settings: SearchSettings | None = None,
                 index_options: Mapping[str, Mapping[str, Any]] | None = None,
                 vector_backend: str = "auto") -> None:
        if poll_s < 0:
            raise ValueError(f"poll_s must be >= 0 (0 = only on reload_now); got {poll_s}")
        self.store = BundleStore(index_root)
        self.embedder = engine.embedder
        self.settings = settings or engine.settings
        self.poll_s = poll_s
        self.index_options = index_options  # per-backend options for opening a version (e.g. Milvus address)
        self.vector_backend = vector_backend  # a version built with another backend is refused, as at start
        self._lock = threading.Lock()
        self._served = _Served(engine)
        self._status = LiveStatus(version=engine.index_version)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._check_lock = threading.Lock()  # one check at a time (watcher thread vs a direct call)
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> LiveEngine:
        """Start following the root in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="lenscope-index-watch", daemon=True)
            self._thread.start()
        return self

    def reload_now(self) -> None:
        """Look at the root now (SIGHUP), without waiting for the next poll."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            served = self._served
        _close_engine(served.engine)
        self.embedder.close()

    # -- the service protocol (what the servicer and health monitor call) -------------------------
    @property
    def engine(self) -> SearchEngine:
        """The engine serving now (may be replaced by the next query)."""
        return self._served.engine

    @property
    def bundle(self):  # noqa: ANN201 - IndexBundle of the version serving now
        return self._served.engine.bundle

    @property
    def model_hash(self) -> str:
        return self._served.engine.model_hash

    @property
    def index_version(self) -> str:
        return self._served.engine.index_version

    def facet_names(self) -> list[str]:
        return self._served.engine.facet_names()

    def ready(self) -> bool:
        return self._served.engine.ready()

    def ann_recall(self) -> float | None:
        return self._served.engine.ann_recall()

    def index_status(self) -> LiveStatus:
        with self._lock:
            return LiveStatus(**{**self._status.__dict__, "last_rejected": dict(self._status.last_rejected)})

    def search(self, query: SearchQuery) -> SearchResult:
        served = self._acquire()
        try:
            return served.engine.search(query)
        finally:
            self._release(served)

    # -- switching ----------------------------------------------------------------------------------
    def check_for_update(self) -> str | None:
        """Switch to `current` if it names a version not served yet; returns the version now served
        when it changed, else None. Safe to call from any thread."""
        with self._check_lock:
            target = self.store.current_version()
            if target is None or target == self.index_version or target in self._status.last_rejected:
                return None
            noticed = time.monotonic()
            try:
                engine = self._open(target)
            except (BundleError, ModelVersionMismatch, ValueError, OSError) as err:
                reason = str(err)
                with self._lock:
                    self._status.rejected += 1
                    self._status.last_rejected = {target: reason}
                _log.error("index_version_rejected", version=target, serving=self.index_version, reason=reason)
                return None
            except Exception as err:  # noqa: BLE001 - e.g. Triton unreachable: transient, try again later
                _log.warning("index_version_check_failed", version=target, serving=self.index_version,
                             error=repr(err), retry_in_s=self.poll_s)
                return None
            self._swap(engine, time.monotonic() - noticed)
            return target

    def _open(self, version: str) -> SearchEngine:
        # The hash an index must carry, as at start-up: an fp16/TensorRT variant serves its fp32
        # model's index only with a passed fidelity record (core/manifest.index_model_hash).
        served_hash, _ = index_model_hash(self.embedder.manifest())
        bundle = open_bundle(self.store.versions_dir / version, expected_model_hash=served_hash,
                             index_options=self.index_options)
        try:
            require_backend(bundle, self.vector_backend, str(self.store.root))
            return SearchEngine(self.embedder, bundle, self.settings)
        except BaseException:
            bundle.close()
            raise

    def _swap(self, engine: SearchEngine, load_s: float) -> None:
        with self._lock:
            old = self._served
            self._served = _Served(engine)
            old.retired = True
            drained = old.inflight == 0
            self._status.version = engine.index_version
            self._status.switched += 1
            self._status.last_switch_s = round(load_s, 3)
            self._status.last_rejected = {}
        _log.info("index_switched", version=engine.index_version, previous=old.engine.index_version,
                  load_s=round(load_s, 3), products=engine.bundle.manifest.counts.products,
                  previous_inflight=0 if drained else old.inflight)
        if drained:
            _close_engine(old.engine)

    def _acquire(self) -> _Served:
        with self._lock:
            served = self._served
            served.inflight += 1
            return served

    def _release(self, served: _Served) -> None:
        with self._lock:
            served.inflight -= 1
            close = served.retired and served.inflight == 0
        if close:  # the last query on a replaced version: release it now
            _close_engine(served.engine)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s if self.poll_s > 0 else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check_for_update()
            except Exception as err:  # noqa: BLE001 - the watcher must outlive any one bad check
                _log.error("index_watch_failed", error=repr(err))


def _close_engine(engine: SearchEngine) -> None:
    """Release one version: its thread pool and its metadata store (the embedder is shared)."""
    engine.close()
    engine.bundle.close()


def open_live_engine(triton_url: str, index_root: str, settings: SearchSettings = SearchSettings(), *,
                     poll_s: float = DEFAULT_POLL_S, **kwargs: Any) -> LiveEngine:
    """`open_engine` on the root's current version, wrapped to follow the root (watcher started)."""
    from lenscope.client.search.engine import open_engine

    engine = open_engine(triton_url, index_root, settings, **kwargs)
    return LiveEngine(engine, index_root, poll_s=poll_s, settings=settings,
                      index_options=kwargs.get("index_options"),
                      vector_backend=kwargs.get("vector_backend", "auto")).start()
