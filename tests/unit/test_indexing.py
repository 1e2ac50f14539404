"""The indexing job's pipeline logic with a fake embedder: every row accounted for, deterministic row
ids, resumability (in-process after an outage, and across SIGKILLs of a real subprocess), damaged
checkpoints, the ranking fit (self-check, binding), and the CLI wrapper (build, inspect).

Run as a script (`python test_indexing.py CATALOG ROOT BATCH CONCURRENCY`) this file builds an index
with the fake embedder: that is the subprocess the kill tests SIGKILL through the job's test hook.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from lenscope.client.ranking.calibration import load_calibration
from lenscope.client.catalog.rows import CatalogError
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.checkpoint import WORK_DIR, WorkDir, WorkDirBusy
from lenscope.client.index.reader import scan_catalog
from lenscope.client.index.writer import make_index
from lenscope.client.index.job import KILL_HOOK_ENV, IndexBuildConfig, IndexBuildInterrupted, build_index
from lenscope.client.ranking.fusion import FusionWeights, save_weights
from lenscope.client.ranking.policy import TYPE_SIGNALS, RankingPolicy

DIM = 16
COLORS = ("red", "blue", "green")
MODEL_HASH = "fake0001"


# -- a fake model server -----------------------------------------------------------------------------


@dataclass
class FakeError:
    status: str
    message: str

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


@dataclass
class FakeResult:
    embedding: np.ndarray | None = None
    attributes: dict = field(default_factory=dict)
    error: FakeError | None = None


def _vec(*key: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256("|".join(key).encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIM)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


class FakeEmbedder:
    """Deterministic: an image `IMG:<pid>:<view>` embeds near base(pid); a title naming `<pid>` too.

    Anything else is a corrupt image (INVALID_ARGUMENT); a title containing BADTEXT is refused; an
    image `IMG:<pid>:nonunit` returns an unnormalised vector. After `unavailable_after` calls every
    input fails UNAVAILABLE; `flaky` inputs fail UNAVAILABLE on their first try only.
    """

    def __init__(self, unavailable_after: int | None = None, flaky: frozenset[bytes] = frozenset()):
        self.unavailable_after = unavailable_after
        self.flaky = set(flaky)
        self.calls = 0
        self.inputs = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        pass

    def manifest(self) -> dict:
        return {"model_hash": MODEL_HASH,
                "spec": {"embed_dim": DIM, "attributes": [{"name": "color", "labels": list(COLORS)}]}}

    def _down(self) -> bool:
        with self._lock:
            self.calls += 1
            return self.unavailable_after is not None and self.calls > self.unavailable_after

    def _flaky(self, item: bytes) -> bool:
        with self._lock:
            if item in self.flaky:
                self.flaky.discard(item)
                return True
            return False

    def embed_images(self, images: list[bytes]) -> list[FakeResult]:
        if self._down():
            return [FakeResult(error=FakeError("UNAVAILABLE", "failed to connect")) for _ in images]
        self.inputs += len(images)
        out = []
        for b in images:
            if self._flaky(b):
                out.append(FakeResult(error=FakeError("UNAVAILABLE", "restarting")))
                continue
            parts = b.decode("latin-1").split(":")
            if len(parts) != 3 or parts[0] != "IMG":
                out.append(FakeResult(error=FakeError("INVALID_ARGUMENT", "image rejected (corrupt): bad bytes")))
                continue
            _, pid, view = parts
            v = _unit(_vec(pid) + 0.4 * _vec(pid, view))
            if view == "nonunit":
                v = v * 3
            logits = _vec(pid, "attr")[: len(COLORS)]
            probs = np.exp(logits) / np.exp(logits).sum()
            out.append(FakeResult(embedding=v, attributes={"ATTR_COLOR": probs.astype(np.float32)}))
        return out

    def embed_texts(self, texts: list[str]) -> list[FakeResult]:
        if self._down():
            return [FakeResult(error=FakeError("UNAVAILABLE", "failed to connect")) for _ in texts]
        self.inputs += len(texts)
        out = []
        for t in texts:
            if "BADTEXT" in t:
                out.append(FakeResult(error=FakeError("INVALID_ARGUMENT", "text rejected")))
                continue
            pid = next((w for w in t.split() if w.startswith("p0")), t)
            out.append(FakeResult(embedding=_unit(_vec(pid) + 0.8 * _vec(t))))
        return out


# -- catalogs ----------------------------------------------------------------------------------------


def _row(i: int, **over) -> dict:
    pid = f"p{i:04d}"
    row = {"product_id": pid, "title": f"Item {pid} in {COLORS[i % 3]}", "image": f"img/{pid}.png",
           "category": "mug", "color": COLORS[i % 3], "pattern": "solid", "popularity": float(i),
           "photo": f"photo/{pid}.png", "split": "test" if i % 4 == 0 else "train"}
    row.update(over)
    return {k: v for k, v in row.items() if v is not None}


def make_catalog(root: Path, n: int = 30) -> tuple[Path, dict[str, str]]:
    """A catalog with one problem of each kind; returns (path, expected reason per product id)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "photo").mkdir(exist_ok=True)
    lines, expected = [], {}
    for i in range(n):
        pid = f"p{i:04d}"
        over: dict = {}
        image_bytes: bytes | None = f"IMG:{pid}:catalog".encode()
        photo_bytes: bytes | None = f"IMG:{pid}:photo".encode()
        if i == 3:
            image_bytes, expected[pid] = None, "missing_image"
        elif i == 5:
            image_bytes, expected[pid] = b"\x89PNG garbage", "image_rejected"
        elif i == 7:
            over["title"], expected[pid] = f"BADTEXT {pid}", "title_rejected"
        elif i == 9:
            image_bytes, expected[pid] = f"IMG:{pid}:nonunit".encode(), "bad_embedding"
        elif i == 11:
            photo_bytes, expected[pid] = None, "photo_missing_image"  # kept
        elif i == 13:
            photo_bytes, expected[pid] = b"junk", "photo_rejected"  # kept
        elif i == 15:
            over["photo"] = None  # no photo at all: fine, NaN photo vector
        elif i == 17:
            over["popularity"], expected[pid] = -1, "invalid_row"
        elif i == 19:  # a dropped row's photo problem is not reported as a kept row's
            over["title"], photo_bytes, expected[pid] = f"BADTEXT {pid}", None, "title_rejected"
        if image_bytes is not None:
            (root / "img" / f"{pid}.png").write_bytes(image_bytes)
        if photo_bytes is not None and over.get("photo", "x") is not None:
            (root / "photo" / f"{pid}.png").write_bytes(photo_bytes)
        lines.append(json.dumps(_row(i, **over)))
        if i == 20:
            lines.append("{not json")
            lines.append(json.dumps(_row(2)))  # p0002's row again: its product is indexed once (a kept reject)
    path = root / "catalog.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, expected


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    return make_catalog(tmp_path / "cat")[0]


def build(catalog: Path, root: Path, embedder=None, **kw):
    cfg = IndexBuildConfig(catalog=catalog, index_root=root, progress=False, **kw)
    return build_index(cfg, embedder or FakeEmbedder(), sleep=lambda s: None)


def snapshot(root: Path) -> dict:
    """Everything a search reads from the published bundle, for exact comparison."""
    store = BundleStore(root)
    with store.open_current(expected_model_hash=MODEL_HASH) as b:
        ids = np.sort(b.index.stored_ids())
        info = json.loads(b.read_attachment("index_info.json"))
        return {
            "ids": ids, "vectors": b.index.get_vectors(ids),
            "products": [p.model_dump() for p in b.metadata.get(ids)],
            "titles": np.asarray(b.load_array("title_vectors")), "photos": np.asarray(b.load_array("photo_vectors")),
            "attr": np.asarray(b.load_array("attr_probs_color")),
            "calibration": b.read_attachment("calibration.json"), "rejects": b.read_attachment("rejects.jsonl"),
            "fusion": b.read_attachment("fusion.json"), "counts": info["counts"],
        }


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


# -- reader ------------------------------------------------------------------------------------------


def test_scan_reports_bad_rows_without_raising(catalog: Path) -> None:
    scan = scan_catalog(catalog)
    by_reason = {(r.reason, r.product_id) for r in scan.rejects}
    assert ("invalid_row", "p0017") in by_reason  # product id kept from the raw row when it is readable
    assert ("invalid_row", None) in by_reason  # the unparsable JSON line
    assert ("duplicate_row", "p0002") in by_reason
    assert len(scan.rejects) == 3 and scan.rows_read == 31
    assert [s.position for s in scan.rows] == list(range(len(scan.rows)))
    lines = [s.line for s in scan.rows]
    assert lines == sorted(lines) and 18 not in lines  # p0017 is line 18
    assert next(r for r in scan.rejects if r.product_id == "p0017").line == 18

    only_test = scan_catalog(catalog, splits=["test"])
    assert only_test.skipped + len(only_test.rows) == len(scan.rows)
    assert all(s.row.split == "test" for s in only_test.rows)


def test_csv_catalog_and_fatal_header(tmp_path: Path) -> None:
    good = tmp_path / "c.csv"
    good.write_text("product_id,title,image,category,color,pattern,split\n"
                    "a1,T,i.png,mug,red,solid,train\n"
                    "a2,T,i.png,mug,red,solid,nope\n")
    scan = scan_catalog(good)
    assert [s.row.product_id for s in scan.rows] == ["a1"]
    assert [(r.line, r.product_id, r.reason) for r in scan.rejects] == [(3, "a2", "invalid_row")]
    bad = tmp_path / "bad.csv"
    bad.write_text("product_id,title,picture,category,colour,pattern,split\na1,T,i.png,mug,red,solid,train\n")
    with pytest.raises(CatalogError, match=r"missing required column\(s\) \['image'\]"):
        scan_catalog(bad)


# -- the whole job -----------------------------------------------------------------------------------


def test_every_row_is_indexed_or_rejected_with_a_reason(tmp_path: Path) -> None:
    catalog, expected = make_catalog(tmp_path / "cat")
    report = build(catalog, tmp_path / "idx", batch_size=4, concurrency=3)

    dropped = {k: v for k, v in expected.items() if not v.startswith("photo_")}
    assert report.rows_read == 31
    assert report.rejected == len(dropped) + 1  # + the bad JSON line (the repeated row is a kept reject)
    assert report.indexed == 30 - len(dropped)
    assert report.rejected_by_reason == {"bad_embedding": 1, "image_rejected": 1,
                                         "invalid_row": 2, "missing_image": 1, "title_rejected": 2}
    assert report.photos_skipped_by_reason == {"duplicate_row": 1, "photo_missing_image": 1, "photo_rejected": 1}

    lines = [json.loads(t) for t in report.rejects_path.read_text().splitlines()]
    assert lines == sorted(lines, key=lambda r: (r["line"], r["kept"], r["reason"]))
    got = {r["product_id"]: r["reason"] for r in lines if r["product_id"] and r["reason"] != "duplicate_row"}
    assert got == expected
    assert all(set(r) == {"line", "product_id", "reason", "message", "kept"} and r["message"] for r in lines)
    assert "corrupt" in next(r["message"] for r in lines if r["reason"] == "image_rejected")

    with BundleStore(tmp_path / "idx").open_current(expected_model_hash=MODEL_HASH) as b:
        ids = b.metadata.row_ids()
        assert ids.tolist() == list(range(report.indexed))
        products = b.metadata.get(ids)
        pids = [p.product_id for p in products]
        assert pids == sorted(pids) and not set(pids) & set(dropped)  # catalog order, dense ids
        p = products[0]
        assert p.attributes == {"category": ("mug",), "color": ("red",), "pattern": ("solid",)}
        assert p.image_path == "img/p0000.png" and p.popularity == 0.0 and p.title.startswith("Item p0000")
        # the index holds each product's catalog image embedding under its row id
        fake = FakeEmbedder()
        for rid in (0, report.indexed - 1):
            want = fake.embed_images([f"IMG:{pids[rid]}:catalog".encode()])[0].embedding
            np.testing.assert_array_equal(b.index.get_vectors(np.array([rid]))[0], want)
            assert b.index.search(want[None], 1).ids[0, 0] == rid
        titles, photos = b.load_array("title_vectors"), b.load_array("photo_vectors")
        assert titles.shape == (report.indexed, DIM) and titles.dtype == np.float32
        no_photo = {pids.index(pid) for pid in ("p0011", "p0013", "p0015")}
        assert {int(i) for i in np.flatnonzero(np.isnan(photos).any(axis=1))} == no_photo
        assert b.load_array("attr_probs_color").shape == (report.indexed, len(COLORS))
        info = json.loads(b.read_attachment("index_info.json"))
        ranking = info["ranking"]
        assert ranking["source"] == "self-check" and len(ranking["catalog_fingerprint"]) == 16
        # the weights in force are the self-check's fit, and the policy decides every query type
        assert (FusionWeights.model_validate_json(b.read_attachment("fusion.json")).model_dump()
                == ranking["self_check"]["fit"]["weights"])
        policy = RankingPolicy.model_validate_json(b.read_attachment("ranking_policy.json"))
        assert set(policy.decisions) == {"text", "image", "image+text"}
        assert policy.binding.model_hash == MODEL_HASH
        assert all(d.reason and d.ranked_by in ("fused", *TYPE_SIGNALS[t]) for t, d in policy.decisions.items())
        assert b.read_attachment("rejects.jsonl") == report.rejects_path.read_bytes()
        assert info["catalog"]["sha256"] == hashlib.sha256(catalog.read_bytes()).hexdigest()
        assert info["model_hash"] == MODEL_HASH and info["counts"]["indexed"] == report.indexed
        assert info["index_config"]["kind"] == "flat"
        assert set(info["timings_s"]) >= {"read", "embed"} and info["rows_per_s"] > 0
        cal = load_calibration(b.attachment_path("calibration.json"))
        # pseudo-queries (a title with a word left out) calibrate text_title too
        assert set(cal.pairs) == {"text_image", "image_title", "image_image", "text_title"}
        assert cal.model_hash == MODEL_HASH and set(info["calibration"]["notes"]) == set(cal.pairs)
        xs = np.linspace(-1, 1, 201)
        for pair in cal.pairs:
            assert np.all(np.diff(cal.apply(pair, xs)) >= 0)
    assert not (tmp_path / "idx" / WORK_DIR).exists()  # checkpoints are removed after publishing


def test_row_ids_do_not_depend_on_batching_or_concurrency(tmp_path: Path, catalog: Path) -> None:
    build(catalog, tmp_path / "a", batch_size=1, concurrency=1)
    build(catalog, tmp_path / "b", batch_size=7, concurrency=4)
    assert_same(snapshot(tmp_path / "a"), snapshot(tmp_path / "b"))


def test_fusion_weights_file_and_splits(tmp_path: Path, catalog: Path) -> None:
    weights = save_weights(FusionWeights(visual=2.0, popularity=0.0), tmp_path / "w.json")
    report = build(catalog, tmp_path / "idx", fusion_weights=weights, splits=("test",))
    assert report.skipped_other_splits > 0
    assert report.indexed + report.rejected + report.skipped_other_splits == report.rows_read
    with BundleStore(tmp_path / "idx").open_current(expected_model_hash=MODEL_HASH) as b:
        assert FusionWeights.model_validate_json(b.read_attachment("fusion.json")).visual == 2.0
        assert all(int(p.product_id[1:]) % 4 == 0 for p in b.metadata.get(b.metadata.row_ids()))


def test_shipped_fit_is_applied_only_where_it_is_bound(tmp_path: Path, catalog: Path) -> None:
    first = build(catalog, tmp_path / "a")
    fingerprint = first.info["ranking"]["catalog_fingerprint"]
    shipped = FusionWeights(visual=3.0, text_image=0.0)

    class Shipping(FakeEmbedder):
        def __init__(self, binding: dict) -> None:
            super().__init__()
            self.binding = binding

        def manifest(self) -> dict:
            cal = json.loads(first.bundle_path.joinpath("attachments", "calibration.json").read_text())
            return {**super().manifest(), "ranking_fit": {"source": "x.fusion.json, x.calibration.json",
                                                          "fusion": shipped.model_dump(), "calibration": cal,
                                                          **self.binding}}

    bound = build(catalog, tmp_path / "b", Shipping({"model_hash": MODEL_HASH, "catalog_fingerprint": fingerprint}),
                  use_shipped_fit=True)
    assert bound.info["ranking"]["source"] == "bound fit" and "shipped_fit" not in bound.info["ranking"]
    with BundleStore(tmp_path / "b").open_current(expected_model_hash=MODEL_HASH) as b:
        assert FusionWeights.model_validate_json(b.read_attachment("fusion.json")) == shipped
    for binding, why in (({"model_hash": MODEL_HASH, "catalog_fingerprint": "0" * 16}, "made on catalog 0000"),
                         ({"model_hash": "other", "catalog_fingerprint": fingerprint}, "made for model other"),
                         ({}, "applied nowhere else")):
        other = build(catalog, tmp_path / f"c{len(binding)}{why[:4]}", Shipping(binding), use_shipped_fit=True)
        assert other.info["ranking"]["source"] == "self-check"
        assert why in other.info["ranking"]["shipped_fit"]["reason"]


def test_rerank_fit_binding_is_the_catalog_the_index_build_sees(tmp_path: Path) -> None:
    """What ``lenscope rerank fit`` writes beside its weights binds the fit to exactly the catalog an
    index build of the same file computes: there it applies, elsewhere (another file) it does not."""
    from lenscope.client.eval.fitting import catalog_binding
    from lenscope.client.ranking.binding_file import binding_path_for, load_binding, save_binding

    full, expected = make_catalog(tmp_path / "cat")
    dropped = {pid for pid, reason in expected.items() if not reason.startswith("photo_")}
    clean = tmp_path / "cat" / "clean.jsonl"  # the same products without the rows the build rejects
    keep = []
    for line in full.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row["product_id"] not in dropped and row["product_id"] not in {json.loads(k)["product_id"] for k in keep}:
            keep.append(line)
    clean.write_text("\n".join(keep) + "\n")
    binding = catalog_binding(clean, MODEL_HASH, "val")
    report = build(clean, tmp_path / "a")
    assert binding.catalog_fingerprint == report.info["ranking"]["catalog_fingerprint"]
    assert binding.model_hash == MODEL_HASH and binding.products == report.indexed == len(keep)
    path = binding_path_for(tmp_path / "lenscope-x.fusion.json")
    assert path.name == "lenscope-x.binding.json" and binding_path_for(tmp_path / "w.json").name == "w.binding.json"
    save_binding(binding, path)
    assert load_binding(path) == binding
    # a catalog whose rows the build rejects is another catalog for the binding: the fit is not applied
    assert catalog_binding(full, MODEL_HASH, "val").catalog_fingerprint != binding.catalog_fingerprint


class RecordingEmbedder(FakeEmbedder):
    """Remembers every image byte string it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def embed_images(self, images: list[bytes]) -> list[FakeResult]:
        self.sent += images
        return super().embed_images(images)


def test_hostile_image_paths_are_rejected_without_reading_them(tmp_path: Path) -> None:
    root = tmp_path / "cat"
    catalog, _ = make_catalog(root, n=8)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"IMG:p9999:catalog")  # would embed fine: only the path rule keeps it out
    os.mkfifo(root / "img" / "fifo.png")
    hostile = {
        "p0100": ("/dev/zero", "image_outside_catalog"),
        "p0101": (str(secret), "image_outside_catalog"),
        "p0102": ("../secret.png", "image_outside_catalog"),
        "p0103": ("img/fifo.png", "not_a_regular_file"),
        "p0104": ("img", "not_a_regular_file"),
    }
    rows = [json.dumps(_row(100 + i, product_id=pid, image=image, photo=None)) for i, (pid, (image, _)) in enumerate(hostile.items())]
    rows.append(json.dumps(_row(105, product_id="p0105", photo=None, title="\x1b]0;owned\x07\x1b[2JRed mug")))
    catalog.write_text(catalog.read_text() + "\n".join(rows) + "\n")

    embedder = RecordingEmbedder()
    report = build(catalog, tmp_path / "idx", embedder)  # a FIFO or /dev/zero would hang here before
    lines = {r["product_id"]: r for r in map(json.loads, report.rejects_path.read_text().splitlines())}
    for pid, (image, reason) in hostile.items():
        assert lines[pid]["reason"] == reason, lines[pid]
        assert repr(image) in lines[pid]["message"] or image in lines[pid]["message"]
    msg = lines["p0105"]["message"]
    assert lines["p0105"]["reason"] == "invalid_row" and msg.startswith("title:") and "control character (U+001B)" in msg
    assert "\\x1b]0;owned\\x07" in msg  # the value, shown escaped
    assert "\x1b" not in report.rejects_path.read_text()  # escaped in the file too (JSON would write \u001b)
    assert b"IMG:p9999:catalog" not in embedder.sent  # the outside file never reached the model server

    # the user's explicit opt-in reads the outside file
    opted = RecordingEmbedder()
    report = build(catalog, tmp_path / "idx2", opted, allow_outside_images=True)
    assert b"IMG:p9999:catalog" in opted.sent
    lines = {r["product_id"]: r["reason"] for r in map(json.loads, report.rejects_path.read_text().splitlines())}
    assert "p0101" not in lines and lines["p0100"] == "not_a_regular_file"


def test_transient_errors_are_retried_not_rejected(tmp_path: Path, catalog: Path) -> None:
    flaky = frozenset({b"IMG:p0001:catalog", b"IMG:p0002:photo"})
    report = build(catalog, tmp_path / "a", FakeEmbedder(flaky=flaky), batch_size=4)
    build(catalog, tmp_path / "b", batch_size=4)
    assert report.rejected_by_reason == {"bad_embedding": 1, "image_rejected": 1,
                                         "invalid_row": 2, "missing_image": 1, "title_rejected": 2}
    assert_same(snapshot(tmp_path / "a"), snapshot(tmp_path / "b"))


def test_unavailable_server_stops_the_job_and_a_rerun_resumes(tmp_path: Path, catalog: Path) -> None:
    # batch 4, concurrency 1: two embed calls per chunk, so the server dies during the 4th chunk
    down = FakeEmbedder(unavailable_after=7)
    with pytest.raises(IndexBuildInterrupted, match="UNAVAILABLE.*3 of 8 chunks.*resume") as err:
        build(catalog, tmp_path / "idx", down, batch_size=4, concurrency=1)
    assert BundleStore(tmp_path / "idx").current_version() is None  # nothing published, nothing rejected
    assert not (tmp_path / "idx" / "rejects.jsonl").exists()
    assert len(list(err.value.work_dir.glob("chunk-*.npz"))) == 3

    healthy = FakeEmbedder()
    report = build(catalog, tmp_path / "idx", healthy, batch_size=4, concurrency=1)
    assert (report.chunks_resumed, report.chunks_embedded) == (3, 5)
    # one image and one text call per missing chunk, none for the resumed ones, + the self-check's queries
    assert healthy.calls == 2 * 5 + report.info["ranking"]["self_check"]["embed_calls"]
    build(catalog, tmp_path / "ref", batch_size=4)
    assert_same(snapshot(tmp_path / "idx"), snapshot(tmp_path / "ref"))


def test_damaged_or_stale_checkpoints_are_embedded_again(tmp_path: Path, catalog: Path) -> None:
    down = FakeEmbedder(unavailable_after=6)
    with pytest.raises(IndexBuildInterrupted) as err:
        build(catalog, tmp_path / "idx", down, batch_size=4, concurrency=1)
    work = err.value.work_dir
    chunks = sorted(work.glob("chunk-*.npz"))
    assert len(chunks) == 3
    chunks[0].write_bytes(chunks[0].read_bytes()[:100])  # torn file (cannot happen by rename; still handled)
    (catalog.parent / "img" / "p0004.png").write_bytes(b"IMG:p0004:replaced")  # chunk 1's image changed
    (work / "chunk-000002.npz.tmp-999").write_bytes(b"debris")
    report = build(catalog, tmp_path / "idx", batch_size=99, concurrency=2)  # the work dir's chunk size wins
    assert (report.chunks_resumed, report.chunks_embedded, report.chunks_total) == (1, 7, 8)
    with BundleStore(tmp_path / "idx").open_current(expected_model_hash=MODEL_HASH) as b:
        rid = [p.product_id for p in b.metadata.get(b.metadata.row_ids())].index("p0004")
        want = FakeEmbedder().embed_images([b"IMG:p0004:replaced"])[0].embedding
        np.testing.assert_array_equal(b.index.get_vectors(np.array([rid]))[0], want)


def test_work_dir_is_keyed_by_catalog_and_model(tmp_path: Path) -> None:
    kw = dict(catalog=tmp_path / "c.jsonl", model_hash="m1", splits=None, chunk_size=4, n_rows=10)
    a = WorkDir.open(tmp_path, catalog_sha256="a" * 64, **kw)
    b = WorkDir.open(tmp_path, catalog_sha256="b" * 64, **kw)
    c = WorkDir.open(tmp_path, catalog_sha256="a" * 64, **{**kw, "model_hash": "m2"})
    d = WorkDir.open(tmp_path, catalog_sha256="a" * 64, **{**kw, "splits": ["test"]})
    assert len({a.path, b.path, c.path, d.path}) == 4
    assert a.n_chunks == 3 and list(a.chunk_range(2)) == [8, 9]
    with pytest.raises(WorkDirBusy, match="another index build"):  # a's build is still running
        WorkDir.open(tmp_path, catalog_sha256="a" * 64, **kw)
    a.close()
    again = WorkDir.open(tmp_path, catalog_sha256="a" * 64, **{**kw, "chunk_size": 5})
    assert again.path == a.path and again.chunk_size == 4
    again.remove()
    assert not again.path.exists() and not again.path.with_name(again.path.name + ".lock").exists()


# -- kill -9 at chosen points, then resume -------------------------------------------------------------


def _run_job(catalog: Path, root: Path, kill_after: int | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(KILL_HOOK_ENV, None)
    if kill_after is not None:
        env[KILL_HOOK_ENV] = str(kill_after)
    return subprocess.run([sys.executable, __file__, str(catalog), str(root), "3", "2"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_sigkilled_job_resumes_to_the_same_bundle(tmp_path: Path, catalog: Path) -> None:
    root = tmp_path / "idx"
    work = lambda: list((root / WORK_DIR).glob("*/chunk-*.npz"))  # noqa: E731
    first = _run_job(catalog, root, kill_after=2)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert len(work()) >= 2 and BundleStore(root).current_version() is None
    second = _run_job(catalog, root, kill_after=4)
    assert second.returncode == -signal.SIGKILL, second.stderr
    assert len(work()) >= 6 and BundleStore(root).current_version() is None
    last = _run_job(catalog, root, kill_after=None)
    assert last.returncode == 0, last.stderr
    result = json.loads(last.stdout.strip().splitlines()[-1])
    assert result["chunks_resumed"] >= 6 and result["chunks_resumed"] + result["chunks_embedded"] == 10

    build(catalog, tmp_path / "ref", batch_size=3, concurrency=1)
    assert_same(snapshot(root), snapshot(tmp_path / "ref"))


def test_index_kind_selection() -> None:
    assert make_index("auto", 100, DIM).config.kind == "flat"
    assert make_index("auto", 60_000, DIM).config.kind == "hnsw"
    assert make_index("ivfpq", 5000, DIM).config.ivfpq.nlist == 128
    with pytest.raises(ValueError, match="ivfpq needs at least 256"):
        make_index("ivfpq", 100, DIM)


# -- CLI ---------------------------------------------------------------------------------------------


def test_cli_build_and_exit_codes(tmp_path: Path, catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    from lenscope.client.cli import index as index_cli
    from lenscope.client.index import embedder as embedder_mod

    # the CLI uses the real backoff: keep its attempts, drop its waits
    monkeypatch.setattr(embedder_mod, "DEFAULT_RETRY", embedder_mod.RetryPolicy(attempts=6, base_delay_s=0, max_delay_s=0))
    app = typer.Typer()
    app.command("build")(index_cli.index_build_command)
    app.command("generate")(index_cli.catalog_generate_command)
    runner = CliRunner()
    monkeypatch.setattr(index_cli, "_make_embedder", lambda *a: FakeEmbedder())
    args = ["build", "--catalog", str(catalog), "--index-root", str(tmp_path / "idx"), "--no-progress",
            "--batch-size", "8", "--rejects", str(tmp_path / "rej.jsonl")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "indexed" in res.output and (tmp_path / "rej.jsonl").is_file()

    # `index inspect`: rows, facets, model and the fit decision with its held-out numbers
    app.command("inspect")(index_cli.index_inspect_command)
    res = runner.invoke(app, ["inspect", "--index-root", str(tmp_path / "idx"), "--json"])
    assert res.exit_code == 0, res.output
    seen = json.loads(res.output)
    assert seen["model_hash"] == MODEL_HASH and seen["rows"] == 24 and seen["facets"]["category"] == {"mug": 24}
    assert "unknown" not in seen["facets"]["color"] and sum(seen["facets"]["color"].values()) == 24
    assert set(seen["policy"]["decisions"]) == {"text", "image", "image+text"}
    assert seen["ranking"]["source"] == "self-check"
    res = runner.invoke(app, ["inspect", "--index-root", str(tmp_path / "idx")])
    assert res.exit_code == 0 and "ranking per query type" in res.output and "self-check" in res.output, res.output
    rules = {d["rule"] for d in seen["policy"]["decisions"].values()}
    assert rules and all(r in res.output for r in rules)  # which rule chose each ranking
    assert "pseudo-queries by kind" in res.output and "photo+phrase" in res.output
    # what the check used of what was there: every product of a small catalog, queries of the possible
    assert seen["policy"]["notes"]["self_check_sample"].startswith("all 24 products; ")
    assert "self-check: all 24 products" in res.output
    res = runner.invoke(app, ["inspect", "--index-root", str(tmp_path)])
    assert res.exit_code == 2 and "holds no published index" in res.output, res.output

    monkeypatch.setattr(index_cli, "_make_embedder", lambda *a: FakeEmbedder(unavailable_after=0))
    res = runner.invoke(app, [*args[:4], str(tmp_path / "idx2"), "--no-progress"])
    assert res.exit_code == 3 and "resume" in res.output
    res = runner.invoke(app, [*args, "--index-kind", "nope"])
    assert res.exit_code == 2 and "index-kind" in res.output

    res = runner.invoke(app, ["generate", "--out", str(tmp_path / "gen"), "--n-products", "3", "--no-progress",
                              "--image-size", "32"])
    assert res.exit_code == 0, res.output
    assert len(scan_catalog(tmp_path / "gen" / "catalog.jsonl").rows) == 3


# -- the subprocess the kill test runs -----------------------------------------------------------------


if __name__ == "__main__":
    catalog_arg, root_arg, batch, conc = sys.argv[1:5]
    rep = build_index(IndexBuildConfig(catalog=Path(catalog_arg), index_root=Path(root_arg), batch_size=int(batch),
                                       concurrency=int(conc), progress=False),
                      FakeEmbedder(), sleep=lambda s: None, log=type("Quiet", (), {"info": lambda *a, **k: None})())
    print(json.dumps({"chunks_resumed": rep.chunks_resumed, "chunks_embedded": rep.chunks_embedded}))
