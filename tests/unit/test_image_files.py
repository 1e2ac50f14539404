"""The one image-file reader: regular files only, bounded reads, catalog paths confined to the catalog's
folder."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from lenscope.client.inputs.image_files import (
    IMAGE_TOO_LARGE,
    MISSING_IMAGE,
    NOT_A_FILE,
    OUTSIDE_CATALOG,
    ImageFileError,
    catalog_image,
    read_catalog_image,
    read_image_file,
)

CAP = 4096


def _reason(fn, *a, **kw) -> tuple[str, str]:
    with pytest.raises(ImageFileError) as err:
        fn(*a, **kw)
    return err.value.reason, str(err.value)


def test_regular_file_is_read_whole(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x" * CAP)
    assert read_image_file(tmp_path / "a.png", max_bytes=CAP) == b"x" * CAP
    (tmp_path / "empty.png").write_bytes(b"")
    assert read_image_file(tmp_path / "empty.png", max_bytes=CAP) == b""


def test_over_the_cap_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(b"x" * (CAP + 1))
    reason, message = _reason(read_image_file, tmp_path / "big.png", max_bytes=CAP)
    assert reason == IMAGE_TOO_LARGE and "big.png" in message and str(CAP) in message


def test_dev_zero_is_refused_not_read_until_memory_runs_out() -> None:
    reason, message = _reason(read_image_file, "/dev/zero", max_bytes=CAP)
    assert reason == NOT_A_FILE and "/dev/zero is a character device" in message


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    out: list = []
    t = threading.Thread(target=lambda: out.append(_reason(read_image_file, fifo, max_bytes=CAP)), daemon=True)
    t.start()
    t.join(30)  # not a timing assertion: a hang would leave the thread alive and fail below
    assert not t.is_alive(), "reading a FIFO hung"
    assert out[0][0] == NOT_A_FILE and "FIFO" in out[0][1]


def test_directory_socket_and_missing_are_named(tmp_path: Path) -> None:
    assert _reason(read_image_file, tmp_path, max_bytes=CAP)[0] == NOT_A_FILE
    assert _reason(read_image_file, tmp_path / "nope.png", max_bytes=CAP)[0] == MISSING_IMAGE
    sock_path = tmp_path / "s.png"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        assert _reason(read_image_file, sock_path, max_bytes=CAP)[0] == NOT_A_FILE


def test_catalog_paths_stay_in_the_catalog_folder(tmp_path: Path) -> None:
    root = tmp_path / "cat"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.png").write_bytes(b"A")
    (tmp_path / "secret.png").write_bytes(b"SECRET")
    (root / "img" / "inside.png").symlink_to(root / "img" / "a.png")
    (root / "img" / "escape.png").symlink_to(tmp_path / "secret.png")
    assert read_catalog_image(root, "img/a.png", max_bytes=CAP) == b"A"
    assert read_catalog_image(root, "img/inside.png", max_bytes=CAP) == b"A"
    for rel, shown in (("/etc/shadow", "absolute"), (str(tmp_path / "secret.png"), "absolute"),
                       ("../secret.png", "outside"), ("img/../../secret.png", "outside"),
                       ("img/escape.png", "outside")):
        reason, message = _reason(read_catalog_image, root, rel, max_bytes=CAP)
        assert reason == OUTSIDE_CATALOG and shown in message and repr(rel) in message
    # the user's explicit opt-in
    assert read_catalog_image(root, "../secret.png", max_bytes=CAP, allow_outside=True) == b"SECRET"
    assert catalog_image(root, str(tmp_path / "secret.png"), allow_outside=True) == tmp_path / "secret.png"


