"""Faults, for real: tritonserver SIGKILLed under load and brought back, a hung (SIGSTOPped) Triton,
the indexing job SIGKILLed at seeded points, and a corrupted index version on disk.

What each test proves:

* ``test_triton_killed_under_load``: searches fail fast with UNAVAILABLE while Triton is gone
  (failure latency measured and bounded far below the deadline), health turns NOT_SERVING, the
  service recovers by itself once a new Triton listens on the same ports, and no thread or engine
  slot is left behind.
* ``test_hung_triton_deadlines_are_honoured``: with Triton frozen (SIGSTOP keeps its sockets open,
  so calls hang rather than fail) every search answers DEADLINE_EXCEEDED within deadline + slack;
  the same for deadlines shorter than a real embed; afterwards no thread growth, no slot held.
* ``test_index_job_killed_at_seeded_points_resumes_to_the_same_bundle``: through the real Triton,
  the job is SIGKILLed (its test hook) after seeded chunk counts, including after the last chunk
  but before publishing; the rerun resumes and publishes the bundle an uninterrupted build makes.
* ``test_corrupted_current_version_falls_back_to_previous``: bytes flipped in the served version's
  vectors file give a clear checksum error at load, and open_engine + the service serve the
  previous good version.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lenscope.client.api import search_pb2, search_pb2_grpc
from lenscope.client.catalog.reader import read_catalog
from lenscope.client.index.bundle import BundleCorrupt, BundleError
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.checkpoint import WORK_DIR
from lenscope.client.index.job import KILL_HOOK_ENV, IndexBuildConfig, build_index
from lenscope.client.search.engine import SearchSettings, open_engine
from lenscope.client.service.server import serve
from lenscope.client.service.settings import ServiceSettings
from lenscope.client.triton.client import ClientConfig, TritonEmbedder
from lenscope.client.triton.ports import free_ports
from lenscope.client.triton.server import TritonServer, TritonServerConfig

pytestmark = pytest.mark.integration

N = 48
BATCH = 8  # 6 chunks
QUERY = "red t-shirt"


@pytest.fixture(scope="module")
def catalog(make_index) -> Path:
    return make_index(N, 5, BATCH)[0]


@pytest.fixture(scope="module")
def index_root(make_index) -> Path:
    return make_index(N, 5, BATCH)[1]


def _inflight(running) -> float:
    return running.metrics.registry.get_sample_value("lenscope_search_inflight_requests")


def _health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


SHM = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"


def _shm_regions() -> set[str]:
    return {p.name for p in SHM.glob(f"{SHM_PREFIX}*")} if SHM.is_dir() else set()


def _mapped_shm() -> set[str]:
    """Python-backend regions some live process still maps (another test's or worker's Triton)."""
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        mapped |= {line.rsplit("/", 1)[-1].split()[0] for line in text.splitlines() if SHM_PREFIX in line}
    return mapped


def _reap_leaked_shm(created: set[str]) -> list[str]:
    """Unlink the regions a SIGKILLed Triton created and no process maps any more; return them."""
    leaked = sorted(created - _mapped_shm())
    for name in leaked:
        (SHM / name).unlink(missing_ok=True)
    return leaked


def _say(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Figures for the run's log: shown even without -s."""
    with capsys.disabled():
        print(text)


def _thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate())


# Thread pools that grow lazily up to a bound (ThreadPoolExecutor starts a worker only when all are busy),
# so a fault may legitimately add workers up to the bound; only growth outside them, or past a bound, leaks.
_POOL_BOUNDS = {
    "triton": ClientConfig(url="unused").max_concurrency,
    "lenscope-engine": ServiceSettings().max_inflight,
    "lenscope-grpc": ServiceSettings().handler_threads,
}


def _thread_groups() -> Counter[str]:
    """Live threads counted by kind: pool workers without their index, unnamed threads without their number."""
    return Counter(re.sub(r"^Thread-\d+", "Thread", re.sub(r"_\d+$", "", t.name)) for t in threading.enumerate())


def _thread_leaks(before: Counter[str], after: Counter[str], new_ok: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    """Groups that grew beyond what is allowed: a pool kind by more than one pool's bound (threads of
    the same name may belong to several live pools, e.g. an earlier test's idle client, so the count is
    not compared with one bound), any other kind at all (except one thread of each ``new_ok`` prefix,
    e.g. a restarted Triton's log pump), as (before, after)."""
    leaks = {}
    for group, n in after.items():
        was = before.get(group, 0)
        if group in _POOL_BOUNDS:
            if n - was > _POOL_BOUNDS[group]:
                leaks[group] = (was, n)
        elif n > was and not (n == 1 and group.startswith(new_ok)):
            leaks[group] = (was, n)
    return leaks


def _wait(predicate, timeout_s: float, what: str, poll_s: float = 0.05) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        time.sleep(poll_s)
    return time.monotonic() - t0


@dataclass
class Outcome:
    started: float
    seconds: float
    code: grpc.StatusCode


class Load:
    """A few client threads issuing searches in a bounded loop, recording every outcome."""

    def __init__(self, channel: grpc.Channel, requests: list[search_pb2.SearchRequest], threads: int = 4,
                 timeout_s: float = 5.0, max_requests: int = 5000):
        self._stub = search_pb2_grpc.SearchServiceStub(channel)
        self._requests = requests
        self._timeout_s = timeout_s
        self._budget = threading.Semaphore(max_requests)  # bounded even if stop() is never reached
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
                         for i in range(threads)]

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self._timeout_s + 5)
        assert not any(t.is_alive() for t in self._threads), "a client thread hung"

    def _run(self, i: int) -> None:
        n = i
        while not self._stop.is_set() and self._budget.acquire(blocking=False):
            request = self._requests[n % len(self._requests)]
            n += 1
            t0 = time.monotonic()
            try:
                self._stub.Search(request, timeout=self._timeout_s)
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code = err.code()
            with self._lock:
                self.outcomes.append(Outcome(t0, time.monotonic() - t0, code))
            time.sleep(0.005)

    def since(self, t: float, until: float = float("inf")) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if t <= o.started < until]

    def first_ok_after(self, t: float) -> float | None:
        with self._lock:
            oks = [o.started + o.seconds for o in self.outcomes if o.code == grpc.StatusCode.OK and o.started >= t]
        return min(oks) if oks else None


def _queries(catalog: Path) -> list[search_pb2.SearchRequest]:
    rows = read_catalog(catalog).rows
    photo = (catalog.parent / rows[3].image).read_bytes()
    return [search_pb2.SearchRequest(text=QUERY, top_k=5), search_pb2.SearchRequest(image=photo, top_k=5),
            search_pb2.SearchRequest(text=rows[7].title, image=photo, top_k=5)]


# --------------------------------------------------------------------------------------------------
# (a) Triton SIGKILLed under load, then back on the same ports
# --------------------------------------------------------------------------------------------------


def test_triton_killed_under_load(exported_repo: Path, index_root: Path, catalog: Path, tmp_path: Path,
                                  capsys) -> None:
    http, grpc_port, metrics = free_ports(3)
    cfg = TritonServerConfig(model_repository=exported_repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics)
    shm_before = _shm_regions()
    server = TritonServer(cfg, log_path=tmp_path / "triton-1.log").start()
    server.wait_ready(120)
    deadline_s = 5.0
    engine = open_engine(server.grpc_url, str(index_root), SearchSettings(default_deadline_s=deadline_s),
                         triton_timeout_s=deadline_s)
    running = serve(engine, ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=deadline_s,
                                            health_check_interval_s=0.2))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    queries = _queries(catalog)
    try:
        with Load(channel, queries, threads=4, timeout_s=deadline_s):  # warm every pool to its steady size
            time.sleep(1.0)
        threads_before = threading.active_count()
        groups_before = _thread_groups()

        with Load(channel, queries, threads=4, timeout_s=deadline_s) as load:
            time.sleep(1.0)
            t_kill = time.monotonic()
            server.kill()  # SIGKILL to the whole process group, stubs included
            assert server.wait(10) == -signal.SIGKILL
            # SIGKILL gives the python backend no chance to unlink its shared-memory regions
            leaked_shm = _reap_leaked_shm(_shm_regions() - shm_before)
            _wait(lambda: _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING, 5, "health NOT_SERVING")
            time.sleep(1.5)  # searches keep arriving while Triton is gone
            t_restart = time.monotonic()
            server = TritonServer(cfg, log_path=tmp_path / "triton-2.log").start()  # same ports
            server.wait_ready(120)
            t_ready = time.monotonic()
            _wait(lambda: load.first_ok_after(t_ready) is not None, 15, "a search succeeding after Triton returned")
            _wait(lambda: _health(channel) == health_pb2.HealthCheckResponse.SERVING, 5, "health SERVING again")
            t_recovered = load.first_ok_after(t_ready)
            time.sleep(1.0)  # and it stays recovered
        t_end = time.monotonic()

        before = [o for o in load.since(0, t_kill) if o.started + o.seconds < t_kill]
        down = load.since(t_kill + 0.2, t_restart)  # started after the kill had surely landed
        around = load.since(t_kill, t_ready)
        after = load.since(t_recovered, t_end)
        assert before and all(o.code == grpc.StatusCode.OK for o in before), {o.code for o in before}
        assert len(down) >= 8, f"only {len(down)} searches while Triton was down"
        codes = {o.code for o in down}
        assert codes == {grpc.StatusCode.UNAVAILABLE}, codes
        # in flight at the kill: UNAVAILABLE too (connection reset), never a hang or INTERNAL
        assert {o.code for o in around} <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
        fail_s = sorted(o.seconds for o in down)
        p50, worst = statistics.median(fail_s), fail_s[-1]
        assert worst < 1.5, f"failures took up to {worst:.2f} s: not failing fast (deadline {deadline_s} s)"
        assert after and all(o.code == grpc.StatusCode.OK for o in after), [
            (round(o.started - t_ready, 3), round(o.seconds, 3), o.code.name) for o in load.since(t_ready)
            if o.code != grpc.StatusCode.OK]
        recovery_s = t_recovered - t_ready

        _wait(lambda: _inflight(running) == 0, 5, "engine slots released")
        threads_after = threading.active_count()
        leaks = _thread_leaks(groups_before, _thread_groups(), new_ok=("tritonserver-log-",))
        _say(capsys, f"\nTriton SIGKILL under load: {len(down)} searches during the outage, all UNAVAILABLE, "
                     f"failure latency p50 {p50 * 1000:.0f} ms / max {worst * 1000:.0f} ms (deadline {deadline_s:.0f} s); first OK "
                     f"{recovery_s:.2f} s after the new Triton was ready (restart took {t_ready - t_restart:.1f} s); "
                     f"threads {threads_before} -> {threads_after}; {len(load.outcomes)} searches in all; the killed "
                     f"Triton left {len(leaked_shm)} python-backend /dev/shm regions behind (removed)")
        # the bounded pools may have started more workers during the outage (failures overlap
        # differently from successes); nothing else may grow except the new Triton's log pump
        # (the killed one's ended with its pipe)
        assert not leaks, (leaks, _thread_names())
    finally:
        channel.close()
        running.stop(0.2)
        engine.close()
        server.stop()


# --------------------------------------------------------------------------------------------------
# (b) A hung Triton: deadlines honoured, nothing accumulates
# --------------------------------------------------------------------------------------------------


def _timed(stub, request, timeout_s: float) -> tuple[grpc.StatusCode, float]:
    t0 = time.monotonic()
    try:
        stub.Search(request, timeout=timeout_s)
        code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        code = err.code()
    return code, time.monotonic() - t0


def _zero_png(width: int, height: int) -> bytes:
    """A valid all-zero greyscale PNG: a large image that is a small file (~10 KB for 9 Mpx)."""
    import zlib

    row = b"\x00" * (width + 1)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _frozen_round(triton, stub, queries, deadline_s: float, callers: int = 4, each: int = 5):
    """SIGSTOP Triton (its sockets stay open: calls hang, they do not fail), search, SIGCONT."""
    results, lock = [], threading.Lock()

    def caller(i: int) -> None:
        for k in range(each):
            r = _timed(stub, queries[(i + k) % len(queries)], deadline_s)
            with lock:
                results.append(r)

    os.kill(triton.pid, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a caller hung past its deadline"
    finally:
        os.kill(triton.pid, signal.SIGCONT)
    return results


def test_hung_triton_deadlines_are_honoured(triton, index_root: Path, catalog: Path, capsys) -> None:
    engine = open_engine(triton.grpc_url, str(index_root), SearchSettings(default_deadline_s=5.0),
                         triton_timeout_s=2.0)
    running = serve(engine, ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=5.0))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = search_pb2_grpc.SearchServiceStub(channel)
    queries = _queries(catalog)
    slack_s = 0.25
    try:
        with Load(channel, queries, threads=4, timeout_s=5.0):  # warm pools
            time.sleep(0.5)
        threads_before = threading.active_count()
        groups_before = _thread_groups()

        # 1. Triton healthy, but the query needs longer than its deadline: a valid 9 Mpx PNG takes
        # ~80 ms to decode and resize in Triton's preprocess model; the caller allows 20 ms.
        slow = search_pb2.SearchRequest(image=_zero_png(3000, 3000), top_k=3)
        short = [_timed(stub, slow, 0.02) for _ in range(10)]
        assert {c for c, _ in short} == {grpc.StatusCode.DEADLINE_EXCEEDED}, short
        assert max(s for _, s in short) < 0.02 + slack_s
        _wait(lambda: _inflight(running) == 0, 10, "engine slots released after the slow queries")

        # 2. Triton frozen: every call hangs until its deadline. Two rounds: pools grow lazily to their
        # bounds in the first, so the second shows whether anything accumulates per hang.
        deadline_s = 0.3
        results = _frozen_round(triton, stub, queries, deadline_s)
        threads_round1 = threading.active_count()
        _wait(lambda: _inflight(running) == 0, 10, "engine slots released after round 1")
        results += _frozen_round(triton, stub, queries, deadline_s)
        codes = {c for c, _ in results}
        late = max(s for _, s in results)
        assert len(results) == 40 and codes == {grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        assert late < deadline_s + slack_s, f"answered after {late:.3f} s with a {deadline_s} s deadline"

        # 3. after Triton resumes: engine slots drain, searches work, no threads accumulated
        drained_s = _wait(lambda: _inflight(running) == 0, 10, "engine slots released")
        assert stub.Search(queries[0], timeout=10).hits
        threads_after = threading.active_count()
        _say(capsys, f"\nhung Triton: 40/40 DEADLINE_EXCEEDED with a {deadline_s * 1000:.0f} ms deadline, "
                     f"slowest answer {late * 1000:.0f} ms; 10/10 with a 20 ms deadline on a 9 Mpx image "
                     f"(slowest {max(s for _, s in short) * 1000:.0f} ms); engine slots drained {drained_s:.2f} s "
                     f"after resuming; "
                     f"threads {threads_before} warm -> {threads_round1} after hang 1 -> {threads_after} after hang 2")
        # pools may grow to their bounds (engine: max_inflight) while calls hang, but nothing accumulates per hang
        assert not _thread_leaks(groups_before, _thread_groups()), (_thread_leaks(groups_before, _thread_groups()),
                                                                    _thread_names())
        assert threads_round1 <= threads_before + ServiceSettings().max_inflight
    finally:
        channel.close()
        running.stop(0.2)
        engine.close()


def test_engine_keeps_the_deadline_when_its_model_check_is_due(triton, index_root: Path) -> None:
    from lenscope.client.search.models import DeadlineExceeded, SearchQuery

    # a model check due on every search (the default is every 5 s: one search in that window pays)
    engine = open_engine(triton.grpc_url, str(index_root), SearchSettings(model_check_interval_s=1e-6),
                         triton_timeout_s=2.0)
    try:
        os.kill(triton.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            with pytest.raises(DeadlineExceeded):
                engine.search(SearchQuery(text=QUERY, deadline_s=0.3))
        finally:
            took = time.monotonic() - t0
            os.kill(triton.pid, signal.SIGCONT)
        assert took < 0.3 + 0.25, f"engine.search took {took:.2f} s with a 0.3 s deadline"
    finally:
        engine.close()


# --------------------------------------------------------------------------------------------------
# (c) The indexing job SIGKILLed at seeded points, through the real Triton
# --------------------------------------------------------------------------------------------------


def _index_job(catalog: Path, root: Path, triton_url: str, kill_after: int | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(KILL_HOOK_ENV, None)
    if kill_after is not None:
        env[KILL_HOOK_ENV] = str(kill_after)
    cmd = [sys.executable, "-m", "lenscope.client.cli.app", "index", "build", "--catalog", str(catalog),
           "--index-root", str(root), "--triton", triton_url, "--batch-size", str(BATCH), "--concurrency", "2",
           "--timeout", "30", "--no-progress"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def _snapshot(root: Path, model_hash: str) -> dict:
    with BundleStore(root).open_current(expected_model_hash=model_hash) as b:
        ids = np.sort(b.index.stored_ids())
        info = json.loads(b.read_attachment("index_info.json"))
        return {
            "ids": ids, "vectors": np.asarray(b.index.get_vectors(ids)),
            "products": [p.model_dump() for p in b.metadata.get(ids.tolist())],
            "titles": np.asarray(b.load_array("title_vectors")), "photos": np.asarray(b.load_array("photo_vectors")),
            "rejects": b.read_attachment("rejects.jsonl"), "counts": info["counts"],
            "calibration": json.loads(b.read_attachment("calibration.json")),
        }


def test_index_job_killed_at_seeded_points_resumes_to_the_same_bundle(catalog: Path, triton, manifest,
                                                                      tmp_path: Path, capsys) -> None:
    chunks = -(-N // BATCH)
    rng = random.Random(7)
    kills = [rng.randint(1, 2), rng.randint(1, 2)]
    kills.append(chunks - sum(kills))  # the last run dies after its final chunk: everything embedded, nothing published
    root = tmp_path / "killed"
    work = lambda: sorted((root / WORK_DIR).glob("*/chunk-*.npz"))  # noqa: E731
    done = 0
    for k in kills:
        proc = _index_job(catalog, root, triton.grpc_url, k)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        done += k
        assert len(work()) >= done, (done, work())
        assert BundleStore(root).current_version() is None  # a killed job never publishes
    final = _index_job(catalog, root, triton.grpc_url, None)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"{chunks} / 0" in final.stdout.replace("\n", " ") or "/ 0" in final.stdout, final.stdout
    assert not work(), "checkpoints are removed after publishing"

    reference = tmp_path / "uninterrupted"
    with TritonEmbedder(ClientConfig(url=triton.grpc_url, timeout_s=30.0, max_concurrency=16)) as emb:
        build_index(IndexBuildConfig(catalog=catalog, index_root=reference, batch_size=BATCH, concurrency=2,
                                     progress=False), emb)
    got, want = _snapshot(root, manifest.model_hash), _snapshot(reference, manifest.model_hash)
    np.testing.assert_array_equal(got["ids"], want["ids"])
    assert got["products"] == want["products"] and got["rejects"] == want["rejects"]
    assert got["counts"] == want["counts"] and got["counts"]["indexed"] == N
    # Same inputs through the same model; Triton's dynamic batcher may group requests differently,
    # which may move the last float bits, so vectors are compared at float32 resolution.
    max_diff = 0.0
    for key in ("vectors", "titles", "photos"):
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-5, err_msg=key)
        max_diff = max(max_diff, float(np.abs(got[key] - want[key]).max()))
    _say(capsys, f"\nindex job SIGKILLed after {kills} chunks (of {chunks}) then resumed: same ids, metadata and "
                 f"rejects; vectors max |diff| {max_diff:.1e} vs an uninterrupted build")


# --------------------------------------------------------------------------------------------------
# (d) The served index version corrupted on disk
# --------------------------------------------------------------------------------------------------


def test_corrupted_current_version_falls_back_to_previous(index_root: Path, catalog: Path, triton, manifest,
                                                          tmp_path: Path, capsys) -> None:
    root = tmp_path / "index"
    shutil.copytree(index_root, root, symlinks=True)
    store = BundleStore(root)
    good = store.current_version()
    with TritonEmbedder(ClientConfig(url=triton.grpc_url, timeout_s=30.0, max_concurrency=16)) as emb:
        newer = build_index(IndexBuildConfig(catalog=catalog, index_root=root, batch_size=BATCH, concurrency=2,
                                             progress=False), emb).bundle_id
    assert store.current_version() == newer != good and store.versions() == sorted([good, newer])

    vectors = root / "versions" / newer / "index" / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    for i in range(len(data) - 64, len(data) - 32):  # flip bytes in the last vector (size unchanged)
        data[i] ^= 0xFF
    vectors.write_bytes(bytes(data))

    # a clear error at load, naming the file and the cause
    with pytest.raises(BundleCorrupt, match=r"vectors\.npy: checksum mismatch"):
        store.open_current(expected_model_hash=manifest.model_hash, fallback=False)

    # the previous good version is what the engine and the service serve
    engine = open_engine(triton.grpc_url, str(root), SearchSettings(default_deadline_s=10.0), triton_timeout_s=10.0)
    running = serve(engine, ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=10.0))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        assert engine.index_version == good
        reason = engine.bundle.fallback_reason
        assert reason and newer in reason and "checksum mismatch" in reason and f"serving {good}" in reason
        resp = search_pb2_grpc.SearchServiceStub(channel).Search(search_pb2.SearchRequest(text=QUERY, top_k=5),
                                                                  timeout=30)
        assert resp.hits and resp.index_version == good
        _say(capsys, f"\ncorrupted {vectors.relative_to(root)}: refused at load; serving {good} instead")
    finally:
        channel.close()
        running.stop(0.2)
        engine.close()

    # with every version damaged there is nothing to fall back to: a clear error, never garbage
    good_vectors = root / "versions" / good / "index" / "vectors.npy"
    good_vectors.write_bytes(good_vectors.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(BundleError, match="no older version is usable"):
        open_engine(triton.grpc_url, str(root))
