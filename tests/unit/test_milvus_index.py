"""Milvus backend against Milvus Lite (in-process): the same `VectorIndex` contract checks as FAISS (run
here on both, side by side), attribute filters pushed down as Milvus expressions vs brute force, the
escaping of filter values, and re-attaching a saved index after the engine was closed."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from pydantic import ValidationError

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from milvus_lite.server_manager import server_manager_instance  # noqa: E402
from vector_index_contract import (  # noqa: E402
    ContractData,
    check_candidate_ids_restrict_results,
    check_exact_search_is_the_oracle,
    check_get_vectors_and_stored_ids,
    check_input_validation,
    check_padding,
    check_recall_monitor,
    check_round_trip,
    check_search_matches_oracle,
    make_data,
)

from lenscope.client.vectors.faiss_index import FaissIndex  # noqa: E402
from lenscope.client.index.bundle_store import BundleStore  # noqa: E402
from lenscope.client.index.metadata import Product  # noqa: E402
from lenscope.client.vectors.milvus_config import MilvusIndexConfig  # noqa: E402
from lenscope.client.vectors.milvus_filters import milvus_filter_expression, milvus_string_literal  # noqa: E402
from lenscope.client.vectors.milvus_index import MilvusIndex  # noqa: E402
from lenscope.client.vectors.milvus_state import STATE_FILE  # noqa: E402
from lenscope.client.vectors.contract import IndexFormatError, VectorIndex, recall_at_k  # noqa: E402

K = 10
# Sized for a 2-core CI box: Milvus Lite is a Python engine (per-row overhead), the point is the contract.
MILVUS_CONFIGS = {
    "milvus-flat": {"index_type": "FLAT"},
    "milvus-hnsw": {"index_type": "HNSW", "hnsw": {"m": 16, "ef_construction": 100, "ef": 64}},
    "milvus-ivf": {"index_type": "IVF_FLAT", "ivf": {"nlist": 64, "nprobe": 8}},
}
BACKENDS = ["faiss-flat", *MILVUS_CONFIGS]
EXACT = {"faiss-flat", "milvus-flat"}
CATEGORIES = ["dress", "shirt", "shoe", "bag", "hat"]
COLORS = ["red", "blue", "green", "black", "white", "burgundy", "navy", "beige"]
_names = (f"c{i}" for i in itertools.count())


@pytest.fixture(autouse=True, scope="module")
def _single_faiss_thread():
    """One OpenMP thread (FAISS here and inside Milvus Lite): oversubscribed barriers on 2 cores are slow."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


@pytest.fixture(scope="module")
def data() -> ContractData:
    return make_data(n=5000, dim=64, num_queries=100)


@pytest.fixture(scope="module")
def attributes(data) -> dict[str, list[str | None]]:
    """Random single-valued attributes; ~10% of products have no colour (never matches a colour filter)."""
    rng = np.random.default_rng(7)
    n = data.ids.size
    colors = [COLORS[i] if rng.random() > 0.1 else None for i in rng.integers(0, len(COLORS), n)]
    return {"category": [CATEGORIES[i] for i in rng.integers(0, len(CATEGORIES), n)], "color": colors}


@pytest.fixture(scope="module")
def lite_db(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("milvus") / "shared.db")


def milvus_config(db: str, name: str = "milvus-hnsw", **overrides) -> MilvusIndexConfig:
    return MilvusIndexConfig(
        uri=db, collection=next(_names), attributes=("category", "color"), **MILVUS_CONFIGS[name], **overrides
    )


# Insertion order differs from id order (second half first), so stored_ids() order is really checked.
def insertion_order(data: ContractData) -> np.ndarray:
    half = data.ids.size // 2
    return np.concatenate([data.ids[half:], data.ids[:half]])


def fill(index: VectorIndex, data: ContractData, attributes: dict | None = None) -> float:
    half = data.ids.size // 2
    start = time.perf_counter()
    for part in (slice(half, None), slice(None, half)):
        if attributes is None:
            index.add(data.ids[part], data.base[part])
        else:
            index.add(data.ids[part], data.base[part], attributes={k: v[part] for k, v in attributes.items()})
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def indexes(data, attributes, lite_db):
    built: dict[str, VectorIndex] = {"faiss-flat": FaissIndex(data.dim)}
    fill(built["faiss-flat"], data)
    for name in MILVUS_CONFIGS:
        built[name] = MilvusIndex(data.dim, milvus_config(lite_db, name))
        seconds = fill(built[name], data, attributes)
        start = time.perf_counter()
        built[name].flush()  # as save() does before a bundle is published
        print(
            f"\n{name}: insert {data.ids.size / seconds:,.0f} rows/s, flush + index "
            f"{time.perf_counter() - start:.2f} s (N={data.ids.size}, D={data.dim})"
        )
    yield built
    for index in built.values():
        if isinstance(index, MilvusIndex):
            index.close()


@pytest.fixture(params=BACKENDS)
def backend(request, indexes) -> tuple[str, VectorIndex]:
    return request.param, indexes[request.param]


# -- the shared contract ---------------------------------------------------------------------------


def test_search_matches_oracle(backend, data):
    name, index = backend
    recall = check_search_matches_oracle(index, data, K, exact=name in EXACT)
    start = time.perf_counter()
    index.search(data.queries, K)
    batch = time.perf_counter() - start
    start = time.perf_counter()
    for q in data.queries[:20]:
        index.search(q[None, :], K)
    single = (time.perf_counter() - start) / 20
    print(
        f"\n{name}: recall@{K}={recall:.3f}; {len(data.queries)} queries in one call {batch * 1000:.0f} ms "
        f"({len(data.queries) / batch:,.0f} QPS); batch-1 {single * 1000:.1f} ms ({1 / single:,.0f} QPS)"
    )


def test_exact_search_is_the_oracle(backend, data):
    check_exact_search_is_the_oracle(backend[1], data, K)


@pytest.mark.parametrize("exact_max", [10_000, 0], ids=["exact-subset", "pushed-down"])
def test_candidate_ids_restrict_results(backend, data, exact_max):
    name, index = backend
    saved = index.config.filtered_exact_max
    index.set_search_params(filtered_exact_max=exact_max)
    try:
        check_candidate_ids_restrict_results(index, data, exact_path=bool(exact_max) or name in EXACT)
    finally:
        index.set_search_params(filtered_exact_max=saved)


def test_get_vectors_and_stored_ids(backend, data):
    check_get_vectors_and_stored_ids(backend[1], data, insertion_order(data))


@pytest.mark.parametrize("kind", ["faiss", "milvus"])
def test_padding_and_input_validation(kind, data, lite_db):
    opened: list[MilvusIndex] = []

    def new_index() -> VectorIndex:
        if kind == "faiss":
            return FaissIndex(data.dim)
        opened.append(MilvusIndex(data.dim, milvus_config(lite_db)))
        return opened[-1]

    try:
        check_padding(new_index, data)
        check_input_validation(new_index, data)
    finally:
        for index in opened:
            index.close()


@pytest.mark.parametrize("name", ["faiss-flat", "milvus-flat"])
def test_recall_monitor_on_exact_index(name, indexes, data):
    check_recall_monitor(indexes[name], data, K)


def test_round_trip_faiss(data, tmp_path):
    index = FaissIndex(data.dim)
    fill(index, data)

    def reopen() -> VectorIndex:
        index.save(tmp_path)
        return FaissIndex.load(tmp_path)

    check_round_trip(index, reopen, data, K)


def test_round_trip_milvus_reopens_the_engine_from_disk(data, attributes, tmp_path):
    """Own .db directory: closing the last index on it stops the in-process Lite server, so `load`
    starts a fresh one on the files on disk, as a restarted process would, and load_collection()s."""
    db = str(tmp_path / "roundtrip.db")
    index = MilvusIndex(data.dim, milvus_config(db))
    fill(index, data, attributes)
    loaded: list[MilvusIndex] = []

    def reopen() -> VectorIndex:
        index.save(tmp_path / "index")
        index.close()
        assert db not in server_manager_instance._servers, "the Lite server should be stopped"
        start = time.perf_counter()
        loaded.append(MilvusIndex.load(tmp_path / "index"))
        print(f"\nmilvus reopen + load_collection + verify: {time.perf_counter() - start:.2f} s")
        return loaded[0]

    try:
        check_round_trip(index, reopen, data, K)
        got = loaded[0].get_attributes(data.ids[[4, 2]])
        assert got == {name: [values[4], values[2]] for name, values in attributes.items()}
        assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [STATE_FILE], "no data in the bundle"
    finally:
        for opened in loaded:
            opened.close()


# -- filter push-down ------------------------------------------------------------------------------


def test_filter_expression_format():
    assert milvus_filter_expression(None) == milvus_filter_expression({}) == ""
    assert (
        milvus_filter_expression({"color": {"red", "blue"}, "category": {"dress"}})
        == 'category in ["dress"] and color in ["blue", "red"]'
    )
    assert milvus_string_literal('say "hi"\\ now') == r'"say \"hi\"\\ now"'
    assert milvus_string_literal("a\nb\tc\rd") == r'"a\nb\tc\rd"'
    assert milvus_string_literal("é漢'") == '"é漢\'"'


@pytest.mark.parametrize(
    ("filters", "error"),
    [
        ({"color": set()}, "needs at least one value"),
        ({"color": "red"}, "not the string"),
        ({"Color": {"red"}}, "must match"),
        ({"color or id": {"red"}}, "must match"),
        ({"in": {"red"}}, "reserved"),
        ({"id": {"1"}}, "reserved"),
        ({"color": {"red\x00"}}, "control character"),
        ({"color": {1}}, "must be strings"),
    ],
)
def test_filter_expression_refuses_what_it_cannot_express_safely(filters, error):
    with pytest.raises((ValueError, TypeError), match=error):
        milvus_filter_expression(filters)


INJECTIONS = [
    'red"] or id >= 0 or color in ["',
    'red\\"] or id >= 0 or color in [\\"',
    "red'] or id >= 0 or color in ['",
    "\\",
    '"',
    'a\\"b',
    "x\\n",
    "line\nbreak",
    "é漢 ✓",
    "red",
]


def test_escaped_values_match_only_themselves_in_milvus(lite_db):
    """Every hostile value stored and filtered on finds exactly its own row: nothing leaves the literal."""
    dim = 4
    vectors = np.tile(np.array([[1, 0, 0, 0]], dtype=np.float32), (len(INJECTIONS) + 1, 1))
    with MilvusIndex(dim, MilvusIndexConfig(uri=lite_db, collection=next(_names), attributes=("color",))) as index:
        index.add(np.arange(len(vectors)), vectors, attributes={"color": [*INJECTIONS, None]})
        for row, value in enumerate(INJECTIONS):
            result = index.search(vectors[:1], len(vectors), filters={"color": {value}})
            assert result.ids[0][result.ids[0] >= 0].tolist() == [row], value
            exact = index.exact_search(vectors[:1], len(vectors), filters={"color": {value}})
            assert exact.ids[0][exact.ids[0] >= 0].tolist() == [row], value
        assert (index.search(vectors[:1], 3, filters={"color": {"no such colour"}}).ids == -1).all()


FILTERS = [
    {"category": {"dress"}},
    {"color": {"red", "burgundy"}},
    {"category": {"dress", "bag"}, "color": {"navy"}},
    {"category": {"shoe"}, "color": {"white", "beige", "unknown-value"}},
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: milvus_filter_expression(f).replace(" ", ""))
@pytest.mark.parametrize("exact_max", [10_000, 0], ids=["fetch-matching", "ann-pushdown"])
@pytest.mark.parametrize("name", list(MILVUS_CONFIGS))
def test_filter_pushdown_matches_brute_force(name, exact_max, filters, indexes, data, attributes):
    """Filtered search vs numpy over the rows whose attributes match: every hit matches, top-k is still
    filled, recall >= 0.95 (1 where the path is exact), scores exact; with and without candidate ids."""
    index = indexes[name]
    mask = np.ones(data.ids.size, dtype=bool)
    for facet, values in filters.items():
        mask &= np.isin(np.array(attributes[facet], dtype=object), list(values))
    allowed = data.ids[mask]
    truth = data.oracle(K, allowed=allowed)
    min_recall = 0.999 if exact_max or name == "milvus-flat" else 0.95
    index.set_search_params(filtered_exact_max=exact_max)
    try:
        result = index.search(data.queries, K, filters=filters)
        candidates = data.ids[::3]
        both = index.search(data.queries, K, candidate_ids=candidates, filters=filters)
    finally:
        index.set_search_params(filtered_exact_max=2048)
    assert np.isin(result.ids, allowed).all(), "a hit violates the filter"
    assert (result.ids >= 0).all(), "filtered search must still fill top-k when enough rows match"
    recall = recall_at_k(result.ids, truth.ids).mean()
    assert recall >= min_recall, recall
    np.testing.assert_allclose(result.scores, data.exact_scores(result.ids), atol=1e-5)
    np.testing.assert_array_equal(index.exact_search(data.queries, K, filters=filters).ids, truth.ids)

    # Filters and candidate ids combine (AND).
    both_allowed = np.intersect1d(allowed, candidates)
    assert np.isin(both.ids[both.ids >= 0], both_allowed).all()
    assert recall_at_k(both.ids, data.oracle(K, allowed=both_allowed).ids).mean() >= min_recall


def test_unknown_filter_attribute_is_refused(indexes, data):
    with pytest.raises(ValueError, match=r"unknown filter attributes \['size'\]"):
        indexes["milvus-flat"].search(data.queries[:1], K, filters={"size": {"m"}})


def test_add_validates_attributes(lite_db, data):
    with MilvusIndex(data.dim, milvus_config(lite_db, "milvus-flat", attribute_max_length=8)) as index:
        ids, vecs = data.ids[:2], data.base[:2]
        with pytest.raises(ValueError, match=r"attributes \['size'\] are not declared"):
            index.add(ids, vecs, attributes={"size": ["m", "l"]})
        with pytest.raises(ValueError, match="has 1 values for 2 rows"):
            index.add(ids, vecs, attributes={"color": ["red"]})
        with pytest.raises(ValueError, match="row 1: value longer than attribute_max_length"):
            index.add(ids, vecs, attributes={"color": ["red", "x" * 9]})
        with pytest.raises(ValueError, match="must be str or None"):
            index.add(ids, vecs, attributes={"color": ["red", 3]})
        assert index.count() == 0
        index.add(ids, vecs)  # undeclared values default to None
        assert index.get_attributes(ids) == {"category": [None, None], "color": [None, None]}


# -- configuration, ownership of the data, re-attaching --------------------------------------------


def test_config_validation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert MilvusIndexConfig(uri="rel/x.db").uri == str(tmp_path / "rel" / "x.db"), "lite paths made absolute"
    assert MilvusIndexConfig(uri="http://milvus.search.svc:19530").uri == "http://milvus.search.svc:19530"
    with pytest.raises(ValidationError, match="must not carry credentials"):
        MilvusIndexConfig(uri="https://root:Milvus@host:19530")
    with pytest.raises(ValidationError, match="must be http"):
        MilvusIndexConfig(uri="ftp://host")
    with pytest.raises(ValidationError, match="environment variable NAME"):
        MilvusIndexConfig(token_env="root:Milvus")
    with pytest.raises(ValidationError, match="collection"):
        MilvusIndexConfig(collection="lenscope-v1")
    with pytest.raises(ValidationError, match="reserved"):
        MilvusIndexConfig(attributes=("seq",))
    with pytest.raises(ValidationError, match=r"nprobe \(64\) must be <= nlist \(32\)"):
        MilvusIndexConfig(ivf={"nlist": 32, "nprobe": 64})
    with pytest.raises(ValidationError, match="index_type"):
        MilvusIndexConfig(index_type="IVF_PQ")


def test_existing_collection_is_not_overwritten(lite_db, data):
    config = milvus_config(lite_db, "milvus-flat")
    with MilvusIndex(data.dim, config) as first:
        first.add(data.ids[:5], data.base[:5])
        with pytest.raises(ValueError, match="already exists"):
            MilvusIndex(data.dim, config)
        with MilvusIndex(data.dim, config, drop_existing=True) as second:
            assert second.count() == 0 and second.ntotal == 0


def test_token_comes_from_the_environment_and_is_never_saved(lite_db, data, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSCOPE_TEST_MILVUS_TOKEN", "root:s3cret-token")
    config = milvus_config(lite_db, "milvus-flat", token_env="LENSCOPE_TEST_MILVUS_TOKEN")
    with MilvusIndex(data.dim, config) as index:
        index.add(data.ids[:10], data.base[:10])
        index.save(tmp_path)
    saved = (tmp_path / STATE_FILE).read_text()
    assert "s3cret" not in saved and '"token_env": "LENSCOPE_TEST_MILVUS_TOKEN"' in saved


def test_load_refuses_a_collection_that_is_not_what_was_saved(lite_db, data, tmp_path):
    config = milvus_config(lite_db, "milvus-flat")
    index = MilvusIndex(data.dim, config)
    index.add(data.ids[:200], data.base[:200])
    index.save(tmp_path)
    with MilvusIndex.load(tmp_path) as ok:
        assert ok.ntotal == 200

    index.add(data.ids[200:201], data.base[200:201])  # written to after saving
    with pytest.raises(IndexFormatError, match="holds 201 rows, saved with 200"):
        MilvusIndex.load(tmp_path)

    index.close()
    with MilvusIndex(data.dim, config, drop_existing=True) as refilled:  # same name and count, other rows
        refilled.add(data.ids[200:400], data.base[200:400])
        with pytest.raises(IndexFormatError, match="content differs from what was saved"):
            MilvusIndex.load(tmp_path)
        refilled.drop()
        with pytest.raises(IndexFormatError, match="does not exist"):
            MilvusIndex.load(tmp_path)

    state = json.loads((tmp_path / STATE_FILE).read_text())
    (tmp_path / STATE_FILE).write_text(json.dumps({**state, "format_version": 99}))
    with pytest.raises(IndexFormatError, match="format_version 99"):
        MilvusIndex.load(tmp_path)


def test_bundle_publish_and_open_with_the_milvus_backend(lite_db, data, tmp_path):
    """The bundle holds the reference (checksummed), the data stays in Milvus; open_bundle re-attaches."""
    n = 300
    index = MilvusIndex(data.dim, milvus_config(lite_db, "milvus-hnsw"))
    index.add(data.ids[:n], data.base[:n], attributes={"color": ["red", "blue", "green"] * (n // 3)})
    products = [Product(row_id=int(i), product_id=f"p{i}") for i in data.ids[:n]]
    store = BundleStore(tmp_path / "bundles")
    store.publish(model_manifest_hash="sha256:abc", index=index, products=products)
    index.close()
    with store.open_current(expected_model_hash="sha256:abc") as bundle:
        assert bundle.manifest.index_backend == "milvus"
        assert sorted(bundle.manifest.files) == ["index/milvus_index.json", "metadata.sqlite"]
        assert isinstance(bundle.index, MilvusIndex) and bundle.index.ntotal == n
        hits = bundle.index.search(data.base[:3], 1, filters={"color": {"red", "blue", "green"}})
        assert hits.ids[:, 0].tolist() == data.ids[:3].tolist()
        bundle.index.close()


def test_state_file_is_small_and_describes_the_collection(indexes, tmp_path):
    index = indexes["milvus-hnsw"]
    index.save(tmp_path)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["ntotal"] == index.ntotal and state["config"]["collection"] == index.collection
    assert len(state["fingerprint"]["seqs"]) == 16
    assert (tmp_path / STATE_FILE).stat().st_size < 4096
    assert Path(state["config"]["uri"]).is_absolute()
