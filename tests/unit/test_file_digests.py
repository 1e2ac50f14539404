"""Image-file digests remembered between builds (index/file_digests.py): a file is taken from memory
only while its (device, inode, size, mtime, ctime) are unchanged; a rewrite with the same size and a
restored mtime is read again, a just-written file is never remembered (racy), a file replaced by a
FIFO is refused as before, and row keys are the same with or without the memory."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from lenscope.client.index import file_digests
from lenscope.client.index.embedder import ModelInfo
from lenscope.client.index.file_digests import FileDigests
from lenscope.client.index.incremental import row_keys
from lenscope.client.index.reader import scan_catalog

MAX = 1 << 20


def _roundtrip(d: FileDigests) -> FileDigests:
    return FileDigests.load(d.dump())


def test_unchanged_file_comes_from_memory_and_a_same_size_rewrite_is_read_again(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(file_digests, "RACY_S", 0.0)
    (tmp_path / "a.png").write_bytes(b"first content")
    first = FileDigests()
    digest, reason = first.digest(tmp_path, "a.png", max_bytes=MAX)
    assert reason == "" and digest == hashlib.sha256(b"first content").digest() and first.read == 1

    again = _roundtrip(first)
    assert again.digest(tmp_path, "a.png", max_bytes=MAX) == (digest, "")
    assert (again.reused, again.read) == (1, 0)

    st = os.stat(tmp_path / "a.png")
    time.sleep(0.05)  # past the file system's timestamp tick: the rewrite gets a new ctime
    (tmp_path / "a.png").write_bytes(b"other content")  # same size
    os.utime(tmp_path / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime cannot be
    third = _roundtrip(again)
    assert third.digest(tmp_path, "a.png", max_bytes=MAX) == (hashlib.sha256(b"other content").digest(), "")
    assert (third.reused, third.read) == (0, 1)


def test_a_just_written_file_is_not_remembered(tmp_path: Path) -> None:
    (tmp_path / "new.png").write_bytes(b"x" * 100)
    d = FileDigests()
    assert d.digest(tmp_path, "new.png", max_bytes=MAX)[1] == ""
    assert d.seen == {}, "a file younger than RACY_S could still change within the same timestamp tick"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_file_replaced_by_a_fifo_is_refused_not_served_from_memory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(file_digests, "RACY_S", 0.0)
    (tmp_path / "a.png").write_bytes(b"bytes")
    first = FileDigests()
    first.digest(tmp_path, "a.png", max_bytes=MAX)
    os.remove(tmp_path / "a.png")
    os.mkfifo(tmp_path / "a.png")
    assert _roundtrip(first).digest(tmp_path, "a.png", max_bytes=MAX) == (None, "not_a_regular_file")
    assert FileDigests().digest(tmp_path, "../outside.png", max_bytes=MAX) == (None, "image_outside_catalog")
    assert FileDigests().digest(tmp_path, "gone.png", max_bytes=MAX) == (None, "missing_image")


def test_row_keys_are_the_same_with_and_without_memory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(file_digests, "RACY_S", 0.0)
    rows = []
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(f"image {i}".encode())
        rows.append({"product_id": f"p{i}", "title": f"thing {i}", "image": f"{i}.png", "color": "red"})
    rows.append({"product_id": "p9", "title": "no file", "image": "missing.png"})
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scan = scan_catalog(tmp_path / "c.jsonl")
    model = ModelInfo(model_hash="m1", embed_dim=4, attributes={})
    plain = row_keys(scan.root, scan.rows, model)
    memory = FileDigests()
    assert row_keys(scan.root, scan.rows, model, digests=memory) == plain
    second = _roundtrip(memory)
    assert row_keys(scan.root, scan.rows, model, digests=second) == plain
    assert (second.reused, second.read) == (4, 0)
