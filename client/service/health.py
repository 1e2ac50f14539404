"""The gRPC health status of the search service: ``backend.ready()`` re-checked in the background and
published as SERVING / NOT_SERVING for the whole server and for ``lenscope.v1.SearchService``.

Separate because it runs on its own thread with its own lifetime, independent of any request.
"""

from __future__ import annotations

import threading
from typing import Any

from grpc_health.v1 import health, health_pb2

from lenscope.client.service.servicer import SERVICE_NAME, SearchBackend


class HealthMonitor:
    """Re-checks ``backend.ready()`` in the background and publishes it as the gRPC health status."""

    def __init__(self, backend: SearchBackend, servicer: health.HealthServicer, interval_s: float, log: Any):
        self._backend = backend
        self._servicer = servicer
        self._interval_s = interval_s
        self._log = log
        self._stop = threading.Event()
        self._serving: bool | None = None
        self._thread = threading.Thread(target=self._run, name="lenscope-health", daemon=True)

    @property
    def serving(self) -> bool:
        """The status last published (False before the first check)."""
        return self._serving is True

    def check(self) -> bool:
        try:
            ready = bool(self._backend.ready())
        except Exception as err:  # "cannot tell" is not ready
            self._log.warning("backend_ready_failed", error=repr(err))
            ready = False
        if ready != self._serving:
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for service in ("", SERVICE_NAME):
                self._servicer.set(service, status)
            self._log.info("health", serving=ready)
            self._serving = ready
        return ready

    def start(self) -> None:
        self.check()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.check()
