"""A light client in its own process: what a caller that is not itself overloaded sees of a shed call.

The load generator (open_loop.py) sends ~100 requests/s from one asyncio event loop on the same 2 cores
as the service and Triton; the time until it *reads* an answer includes its own event loop's backlog
(measured at 2.4x saturation on the 2-core box: most of a shed call's p99 lay between the service's
abort and the generator's read). This probe runs beside it during a step: its own process, a sync gRPC
channel, ``rate`` small text searches per second on a fixed schedule (open loop: latency counts from
each call's due time, futures, no waiting for one answer before the next), each with the same
deadline. Its shed answers are the shed latency a client sees; the generator's are reported next to them.

    python benchmarks/shed_probe.py 127.0.0.1:50051 --seconds 12 --rate 10 --out probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import grpc

from lenscope.client.api import search_pb2, search_pb2_grpc

TEXT = "red leather handbag"


def probe(address: str, seconds: float, rate: float, deadline_s: float) -> list[dict]:
    """``round(seconds * rate)`` calls on a fixed schedule; one row (due offset, latency from due, code) each."""
    rows: list[dict] = []
    lock = threading.Lock()
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        print("ready", flush=True)  # load.py starts its step on this line, so both cover the same seconds
        stub = search_pb2_grpc.SearchServiceStub(channel)
        request = search_pb2.SearchRequest(text=TEXT, top_k=10)
        pending = []
        t0 = time.monotonic() + 0.01
        for i in range(max(1, round(seconds * rate))):
            due = t0 + i / rate
            time.sleep(max(0.0, due - time.monotonic()))

            def done(future: grpc.Future, due: float = due) -> None:
                answered = time.monotonic()
                err = future.exception()
                code = "OK" if err is None else err.code().name
                with lock:
                    rows.append({"due_s": round(due - t0, 4), "latency_ms": (answered - due) * 1000.0, "code": code})

            future = stub.Search.future(request, timeout=deadline_s)
            future.add_done_callback(done)
            pending.append(future)
        for future in pending:  # each has a deadline: bounded
            try:
                future.result(timeout=deadline_s + 2.0)
            except Exception:  # noqa: BLE001 - the code is recorded by the callback
                pass
        time.sleep(0.05)  # callbacks run on the channel's thread; let the last ones land
    with lock:
        return list(rows)


def summarise(rows: list[dict]) -> dict:
    """Codes, and the p50 / p99 of shed (RESOURCE_EXHAUSTED) and OK answers, from the probe's rows."""
    import numpy as np

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if values else None

    shed = [r["latency_ms"] for r in rows if r["code"] == "RESOURCE_EXHAUSTED"]
    ok = [r["latency_ms"] for r in rows if r["code"] == "OK"]
    codes: dict[str, int] = {}
    for r in rows:
        codes[r["code"]] = codes.get(r["code"], 0) + 1
    return {"calls": len(rows), "codes": dict(sorted(codes.items())), "shed": len(shed),
            "shed_p50_ms": pct(shed, 50), "shed_p99_ms": pct(shed, 99), "shed_max_ms": pct(shed, 100),
            "ok_p50_ms": pct(ok, 50), "ok_p99_ms": pct(ok, 99)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("address")
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--deadline-s", type=float, default=1.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    rows = probe(args.address, args.seconds, args.rate, args.deadline_s)
    args.out.write_text(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(main())
