"""The hostile-input corpus (tests/corpus/generate.py) against the real stack: tritonserver, an index
built through it, and the gRPC search service, queried over gRPC like a frontend (or an attacker).

Every case must get exactly its declared status and message fragment; accepted cases must return
hits. Afterwards Triton and the service must still be healthy: health SERVING, Triton ready with
every model READY, a normal query answered, no engine slot leaked.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lenscope.client.api import search_pb2, search_pb2_grpc
from stack import running_service

pytestmark = pytest.mark.integration

N = 40
SEARCH = "/lenscope.v1.SearchService/Search"


def _load_corpus_module():
    path = Path(__file__).resolve().parents[1] / "corpus" / "generate.py"
    spec = importlib.util.spec_from_file_location("lenscope_hostile_corpus", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


corpus = _load_corpus_module()
CASES = corpus.build_corpus(seed=0)


@pytest.fixture(scope="module")
def catalog(make_index) -> Path:
    return make_index(N, 21)[0]


@pytest.fixture(scope="module")
def index_root(make_index) -> Path:
    return make_index(N, 21)[1]


@pytest.fixture(scope="module")
def service(triton, index_root: Path):
    with running_service(triton.grpc_url, index_root) as svc:
        yield svc


def _say(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Figures for the run's log: shown even without -s."""
    with capsys.disabled():
        print(text)


def _send(channel: grpc.Channel, case) -> tuple[grpc.StatusCode, str, search_pb2.SearchResponse | None]:
    """Send one case; return (status, details, response)."""
    if case.raw is not None:  # wire bytes a protobuf client would refuse to build
        call = channel.unary_unary(SEARCH, request_serializer=None,
                                   response_deserializer=search_pb2.SearchResponse.FromString)
        payload = case.raw
    else:
        call = search_pb2_grpc.SearchServiceStub(channel).Search
        payload = case.request
    try:
        response = call(payload, timeout=60, metadata=case.metadata or None)
    except grpc.RpcError as err:
        return err.code(), err.details() or "", None
    return grpc.StatusCode.OK, "", response


def _verdict(case, code: grpc.StatusCode, details: str, response, *, today: bool = False) -> str | None:
    """None if the answer is what the case declares (with `today`: what a known issue answers now)."""
    expect, fragment = case.today if today else (case.expect, case.fragment)
    if code.name != expect:
        return f"status {code.name} ({details!r}), expected {expect}"
    if expect != "OK":
        if fragment not in details:
            return f"message {details!r} lacks {fragment!r}"
        return None
    if case.hits == "some" and not response.hits:
        return "OK but no hits"
    if case.hits == "none" and response.hits:
        return f"OK with {len(response.hits)} hits, expected none"
    for what, check in case.checks:
        if not check(response):
            return f"check failed: {what}"
    return None


def _inflight(running) -> float:
    return running.metrics.registry.get_sample_value("lenscope_search_inflight_requests")


def _healthy(channel: grpc.Channel, triton, engine) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "lenscope.v1.SearchService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    assert triton.is_running() and triton.is_ready()
    import tritonclient.grpc as tc  # only to list model states; the product keeps it in client/triton/client.py

    with tc.InferenceServerClient(triton.grpc_url) as admin:
        states = {m.name: m.state for m in admin.get_model_repository_index(headers=triton.admin_headers()).models}
    assert states and set(states.values()) == {"READY"}, states
    resp = search_pb2_grpc.SearchServiceStub(channel).Search(
        search_pb2.SearchRequest(text=corpus.NORMAL_TEXT, top_k=5), timeout=30)
    assert len(resp.hits) == 5 and resp.model_hash == engine.model_hash


def test_corpus_is_large_and_covers_every_group() -> None:
    groups = Counter(c.group for c in CASES)
    assert len(CASES) >= 30 and min(groups.values()) >= 10, groups
    accepted = {c.name for c in CASES if c.expect == "OK" and c.group == "image"}
    assert {"cmyk_jpeg", "grey16_png", "rgb16_png", "animated_gif", "exif_rotated_jpeg", "one_by_one_png"} <= accepted


def test_whole_corpus_gets_its_declared_status(service, triton, capsys) -> None:
    engine, running, channel = service
    failures, by_status, seconds = [], Counter(), {}
    for case in CASES:
        t0 = time.perf_counter()
        code, details, response = _send(channel, case)
        seconds[case.name] = time.perf_counter() - t0
        by_status[code.name] += 1
        problem = _verdict(case, code, details, response, today=case.known_issue is not None)
        if problem:
            failures.append(f"{case.group}/{case.name}: {problem}")
    passed = len(CASES) - len(failures)
    known = sum(1 for c in CASES if c.known_issue)
    slowest = sorted(seconds.items(), key=lambda kv: -kv[1])[:3]
    _say(capsys, f"\nhostile corpus: {passed}/{len(CASES)} cases answered as declared, {known} of them known issues "
                 f"answered as documented today ({', '.join(f'{k} {v}' for k, v in sorted(by_status.items()))}); "
                 f"slowest: {', '.join(f'{n} {s * 1000:.0f} ms' for n, s in slowest)}")
    assert not failures, "\n".join(failures)

    _healthy(channel, triton, engine)
    assert _inflight(running) == 0  # every engine slot was given back
    _AFTER_FIRST_PASS["threads"] = threading.active_count()


_AFTER_FIRST_PASS: dict[str, int] = {}


def test_second_pass_leaves_no_threads_behind(service, triton, capsys) -> None:
    """Pools start their threads lazily up to fixed bounds; once warm, hostile input must add none."""
    engine, running, channel = service
    if "threads" not in _AFTER_FIRST_PASS:
        pytest.fail("the first corpus pass did not complete")
    for case in CASES:
        _send(channel, case)
    _healthy(channel, triton, engine)
    assert _inflight(running) == 0
    after = threading.active_count()
    _say(capsys, f"\nthreads in the test process (service + engine + clients): {_AFTER_FIRST_PASS['threads']} "
                 f"after the first pass, {after} after the second")
    assert after <= _AFTER_FIRST_PASS["threads"] + 2
