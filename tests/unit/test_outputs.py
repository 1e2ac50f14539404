"""Writers never overwrite or delete what the project did not write: the output checks of
lenscope.client.core.outputs, the model repository writer, and the rejects file of index build."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lenscope.client.core import contract
from lenscope.client.core.outputs import OutputRefused, check_output_dir, check_output_file
from lenscope.client.index.job import is_rejects_file
from lenscope.client.index.reader import Reject
from lenscope.client.index.writer import rejects_jsonl
from lenscope.export.repository import write_repository
from test_triton_config import fake_manifest


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def graphs(tmp_path: Path) -> tuple[dict[str, Path], Path]:
    """Stand-in ONNX files and vocabulary: the writer copies them, it does not parse them."""
    src = tmp_path / "src"
    src.mkdir()
    onnx = {}
    for name, file in ((contract.IMAGE_ENCODER, contract.IMAGE_ONNX), (contract.TEXT_ENCODER, contract.TEXT_ONNX),
                       (contract.ATTRIBUTE_HEADS, contract.HEADS_ONNX)):
        (src / file).write_bytes(b"onnx " + name.encode())
        onnx[name] = src / file
    (src / "vocab.txt.gz").write_bytes(b"vocab")
    return onnx, src / "vocab.txt.gz"


def test_repository_writer_refuses_a_user_folder_and_leaves_it_alone(tmp_path: Path, graphs) -> None:
    user = tmp_path / "userdata"
    user.mkdir()
    (user / "thesis.txt").write_text("work\n")
    before = tree(tmp_path)
    with pytest.raises(OutputRefused, match=r"userdata is a folder lenscope did not write .*'thesis.txt'"):
        write_repository(user, fake_manifest(), *graphs)
    assert tree(tmp_path) == before


def test_repository_writer_replaces_its_own_repository_and_no_neighbour(tmp_path: Path, graphs) -> None:
    out = tmp_path / "repo"
    # neighbours named like the old fixed temp names: they are the user's and must survive
    for sibling in ("repo.tmp", "repo.old"):
        (tmp_path / sibling).mkdir()
        (tmp_path / sibling / "keep.txt").write_text(sibling)
    write_repository(out, fake_manifest(), *graphs)
    assert (out / contract.MANIFEST_FILE).is_file()
    (out / "stale.txt").write_text("from an older export")
    write_repository(out, fake_manifest(), *graphs)  # ours (it holds the manifest): replaced as a whole
    assert not (out / "stale.txt").exists() and (out / contract.MANIFEST_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "repo.old", "repo.tmp", "src"]
    assert (tmp_path / "repo.tmp" / "keep.txt").read_text() == "repo.tmp"
    assert (tmp_path / "repo.old" / "keep.txt").read_text() == "repo.old"


def test_repository_writer_accepts_an_empty_folder_and_refuses_a_file(tmp_path: Path, graphs) -> None:
    (tmp_path / "empty").mkdir()
    write_repository(tmp_path / "empty", fake_manifest(), *graphs)
    assert (tmp_path / "empty" / contract.MANIFEST_FILE).is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputRefused, match="exists and is not a folder"):
        write_repository(tmp_path / "file", fake_manifest(), *graphs)
    assert (tmp_path / "file").read_text() == "x"


def test_output_dir_checks(tmp_path: Path) -> None:
    check_output_dir(tmp_path / "new", "--out", ("marker",), "x")
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "marker").write_text("")
    (tmp_path / "ours" / "other").write_text("")
    check_output_dir(tmp_path / "ours", "--out", ("marker",), "x")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputRefused, match="not a folder"):
        check_output_dir(tmp_path / "fifo", "--out", ("marker",), "x")


def test_output_file_checks(tmp_path: Path) -> None:
    ours = tmp_path / "ours.json"
    ours.write_text("{}")
    check_output_file(ours, "--out", lambda p: True, "a file")
    check_output_file(tmp_path / "new.json", "--out", lambda p: False, "a file")
    (tmp_path / "empty").write_bytes(b"")
    check_output_file(tmp_path / "empty", "--out", lambda p: False, "a file")
    with pytest.raises(OutputRefused, match="not a file that lenscope wrote"):
        check_output_file(ours, "--out", lambda p: False, "a file")
    with pytest.raises(OutputRefused, match="also the input --catalog"):  # even through another spelling
        check_output_file(tmp_path / "x" / ".." / "ours.json", "--out", lambda p: True, "a file",
                          inputs={"--catalog": ours})
    link = tmp_path / "link.json"
    link.symlink_to(ours)
    with pytest.raises(OutputRefused, match="also the input"):
        check_output_file(link, "--out", lambda p: True, "a file", inputs={"--catalog": ours})


def test_rejects_files_we_wrote_are_recognised_and_others_are_not(tmp_path: Path) -> None:
    ours = tmp_path / "rejects.jsonl"
    ours.write_bytes(rejects_jsonl([Reject(3, "p1", "image_missing", "p1.png does not exist", False)]))
    assert is_rejects_file(ours)
    for name, data in {"notes.txt": b"my notes\n", "catalog.jsonl": json.dumps({"product_id": "p"}).encode() + b"\n",
                       "bin": bytes(range(256)), "list.jsonl": b"[1, 2]\n"}.items():
        (tmp_path / name).write_bytes(data)
        assert not is_rejects_file(tmp_path / name), name


def test_benchmarks_write_tracked_reports_only_with_publish(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    monkeypatch.delenv("LENSCOPE_BENCH_WORK", raising=False)
    sys.modules.pop("reporting", None)
    import reporting

    default = reporting.output_dir(None, publish=False)
    assert reporting.output_dir(None, publish=True) == repo / "benchmarks" / "reports"
    assert default != reporting.PUBLISHED and default.is_relative_to(repo)
    probe = default.relative_to(repo) / "ann.json"
    ignored = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", str(probe)])
    assert ignored.returncode == 0, f"{probe} is not git-ignored"
    with pytest.raises(SystemExit):
        reporting.output_dir(Path("x"), publish=True)
    sys.modules.pop("reporting", None)


def test_model_train_recognises_its_checkpoints_and_nothing_else(tmp_path: Path) -> None:
    import zipfile

    from lenscope.client.cli.app import is_lenscope_checkpoint

    repo = Path(__file__).resolve().parents[2]
    assert is_lenscope_checkpoint(repo / "export" / "weights" / "lenscope-tiny.pt")
    other = tmp_path / "other.pt"  # a torch-style zip holding something else
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("other/data.pkl", b"\x80\x02}q\x00X\x05\x00\x00\x00modelq\x01.")
    assert not is_lenscope_checkpoint(other)
    (tmp_path / "notes.txt").write_text("my notes\n")
    assert not is_lenscope_checkpoint(tmp_path / "notes.txt")
