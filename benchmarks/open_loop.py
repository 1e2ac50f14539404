"""Open-loop load on the search service: requests leave on a fixed schedule whatever the server does.

A closed loop (N clients each waiting for its answer) slows down with the server and hides overload:
it can never offer more than the server absorbs. Here request i is due at ``t0 + i / rate``; it is sent
then (or as soon as the event loop can, and the lag is recorded), on its own task, with a deadline, and
its latency is counted from the time it was DUE, so a stalled generator or server cannot make latency
look better than a user would see it (no coordinated omission).

Bounded by construction: a step sends exactly ``round(rate * seconds)`` requests, each with a deadline;
whatever is still outstanding ``deadline + 2 s`` after the last send is cancelled and counted as such;
at most ``max_outstanding`` requests are in flight (beyond that the generator drops, and says so).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from lenscope.client.api import search_pb2, search_pb2_grpc

CLIENT_DROPPED = "CLIENT_DROPPED"  # the generator itself refused to send (too many outstanding)
CLIENT_CANCELLED = "CLIENT_CANCELLED"  # still unanswered when the step's bound ran out


@dataclass(frozen=True)
class Outcome:
    due_s: float  # when it was due, seconds since the step started
    lag_ms: float  # how late the generator sent it
    latency_ms: float  # answer time - due time
    code: str  # gRPC status code name, or CLIENT_DROPPED / CLIENT_CANCELLED
    kind: str  # image / text / image+text


# ------------------------------------------------------------------------------------------------
# Query mix
# ------------------------------------------------------------------------------------------------


def query_mix(catalog_root: Path, mix: dict[str, float], count: int = 400, seed: int = 0,
              top_k: int = 10) -> list[tuple[str, search_pb2.SearchRequest]]:
    """``count`` real queries from the catalog's queries.jsonl (user photos, shopper texts, both), drawn
    in the proportions of ``mix`` (keys: image, text, image+text)."""
    from lenscope.client.catalog.reader import read_queries

    queries = read_queries(catalog_root / "queries.jsonl").queries
    pools: dict[str, list[search_pb2.SearchRequest]] = {"image": [], "text": [], "image+text": []}
    for q in queries:
        image = (catalog_root / q.image).read_bytes() if q.image else None
        if q.type == "image" and image:
            pools["image"].append(search_pb2.SearchRequest(image=image, top_k=top_k))
        elif q.type == "text" and q.text:
            pools["text"].append(search_pb2.SearchRequest(text=q.text, top_k=top_k))
        elif q.type == "image+text" and image and q.text:
            pools["image+text"].append(search_pb2.SearchRequest(image=image, text=q.text, top_k=top_k))
    rng = random.Random(seed)
    kinds = [k for k in mix if mix[k] > 0 and pools.get(k)]
    if not kinds:
        raise ValueError(f"no queries of kinds {list(mix)} in {catalog_root / 'queries.jsonl'}")
    weights = [mix[k] for k in kinds]
    picked = []
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        picked.append((kind, rng.choice(pools[kind])))
    return picked


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


class Driver:
    """gRPC aio channels to one service; ``async with Driver(...) as d: await d.step(rate, seconds)``."""

    def __init__(self, address: str, queries: Sequence[tuple[str, search_pb2.SearchRequest]],
                 deadline_s: float = 1.0, channels: int = 4, max_outstanding: int = 2000) -> None:
        self.address = address
        self.queries = list(queries)
        self.deadline_s = deadline_s
        self.max_outstanding = max_outstanding
        self._n_channels = channels
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[search_pb2_grpc.SearchServiceStub] = []
        self._cursor = 0

    async def __aenter__(self) -> "Driver":
        options = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]
        self._channels = [grpc.aio.insecure_channel(self.address, options=options) for _ in range(self._n_channels)]
        self._stubs = [search_pb2_grpc.SearchServiceStub(c) for c in self._channels]
        for channel in self._channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for channel in self._channels:
            await channel.close()

    def _next(self) -> tuple[int, str, search_pb2.SearchRequest]:
        i = self._cursor
        self._cursor += 1
        kind, request = self.queries[i % len(self.queries)]
        return i, kind, request

    async def _call(self, stub: search_pb2_grpc.SearchServiceStub, request: search_pb2.SearchRequest) -> str:
        try:
            await stub.Search(request, timeout=self.deadline_s)
            return "OK"
        except grpc.aio.AioRpcError as err:
            return err.code().name

    async def closed(self, concurrency: int, seconds: float) -> dict[str, Any]:
        """Closed loop: ``concurrency`` callers back to back for ``seconds`` (capacity estimate, warm-up)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        codes: Counter[str] = Counter()
        latencies: list[float] = []

        async def caller(slot: int) -> None:
            stub = self._stubs[slot % len(self._stubs)]
            while loop.time() < end:
                _, _, request = self._next()
                t = loop.time()
                code = await self._call(stub, request)
                codes[code] += 1
                if code == "OK":
                    latencies.append((loop.time() - t) * 1000.0)

        started = loop.time()
        await asyncio.gather(*(caller(s) for s in range(concurrency)))
        elapsed = loop.time() - started
        return {"concurrency": concurrency, "seconds": round(elapsed, 2), "codes": dict(codes),
                "ok_per_s": round(codes["OK"] / elapsed, 2),
                "p50_ms": float(np.percentile(latencies, 50)) if latencies else None}

    async def step(self, rate: float, seconds: float, sink: Callable[[Outcome], None] | None = None,
                   stop: asyncio.Event | None = None) -> list[Outcome]:
        """Send ``round(rate * seconds)`` requests on a fixed schedule; return (or stream to ``sink``) outcomes."""
        loop = asyncio.get_running_loop()
        total = max(1, round(rate * seconds))
        outcomes: list[Outcome] = []
        emit = sink or outcomes.append
        inflight: set[asyncio.Task] = set()
        t0 = loop.time() + 0.01

        async def one(due: float, kind: str, request: search_pb2.SearchRequest, stub) -> None:
            sent = loop.time()
            try:
                code = await self._call(stub, request)
            except asyncio.CancelledError:
                emit(Outcome(due - t0, max(sent - due, 0.0) * 1000.0, (loop.time() - due) * 1000.0, CLIENT_CANCELLED, kind))
                raise
            emit(Outcome(due - t0, max(sent - due, 0.0) * 1000.0, (loop.time() - due) * 1000.0, code, kind))

        for n in range(total):
            if stop is not None and stop.is_set():
                break
            due = t0 + n / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            i, kind, request = self._next()
            if len(inflight) >= self.max_outstanding:
                emit(Outcome(due - t0, 0.0, 0.0, CLIENT_DROPPED, kind))
                continue
            task = asyncio.create_task(one(due, kind, request, self._stubs[i % len(self._stubs)]))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            _, pending = await asyncio.wait(set(inflight), timeout=self.deadline_s + 2.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        return outcomes


# ------------------------------------------------------------------------------------------------
# Summaries
# ------------------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def summarise(outcomes: Sequence[Outcome], rate: float, seconds: float) -> dict[str, Any]:
    """Per-step figures: offered vs answered rates, codes, latency of successes and of shed requests."""
    codes = Counter(o.code for o in outcomes)
    ok = [o.latency_ms for o in outcomes if o.code == "OK"]
    shed = [o.latency_ms for o in outcomes if o.code == "RESOURCE_EXHAUSTED"]
    # the same calls from the moment they were sent: without this generator's own lag (it shares the cores)
    shed_sent = [o.latency_ms - o.lag_ms for o in outcomes if o.code == "RESOURCE_EXHAUSTED"]
    errors = sum(n for c, n in codes.items() if c != "OK")
    lags = [o.lag_ms for o in outcomes if o.code != CLIENT_DROPPED]
    by_kind = {}
    for kind in sorted({o.kind for o in outcomes}):
        lat = [o.latency_ms for o in outcomes if o.kind == kind and o.code == "OK"]
        by_kind[kind] = {"ok": len(lat), "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}
    n = len(outcomes)
    return {
        "offered_rps": round(rate, 2),
        "requests": n,
        "ok_rps": round(len(ok) / seconds, 2),
        "codes": dict(sorted(codes.items())),
        "error_rate": round(errors / n, 4) if n else None,
        "shed_rate": round(len(shed) / n, 4) if n else None,
        "ok_latency_ms": {"p50": _pct(ok, 50), "p95": _pct(ok, 95), "p99": _pct(ok, 99), "max": _pct(ok, 100)},
        "shed_latency_ms": {"p50": _pct(shed, 50), "p95": _pct(shed, 95), "p99": _pct(shed, 99)},
        "shed_after_send_ms": {"p50": _pct(shed_sent, 50), "p99": _pct(shed_sent, 99)},
        "generator_lag_ms": {"p50": _pct(lags, 50), "p99": _pct(lags, 99)},
        "by_kind": by_kind,
    }
