"""`index remove`'s ids file: what it accepts and the errors that name file, line and value."""

from __future__ import annotations

import pytest

from lenscope.client.index.removal import RemovalError, read_ids


def test_ids_file_skips_blanks_and_comments(tmp_path) -> None:
    f = tmp_path / "ids.txt"
    f.write_text("# withdrawn\n\np1\n  p2  \n# p3\n")
    assert read_ids(f) == [(3, "p1"), (4, "p2")]


@pytest.mark.parametrize("content, expected", [
    (b"", "no product id in the file"),
    (b"# only a comment\n\n", "no product id in the file"),
    (b"p1\np\xff2\n", ":2: not UTF-8 text (byte 0xff)"),
    (b"p1\np\x1b2\n", ":2: product id 'p\\x1b2' contains a control character"),
])
def test_bad_ids_files_name_the_file_and_line(tmp_path, content: bytes, expected: str) -> None:
    f = tmp_path / "ids.txt"
    f.write_bytes(content)
    with pytest.raises(RemovalError) as err:
        read_ids(f)
    assert str(f) in str(err.value) and expected in str(err.value), str(err.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(RemovalError, match="cannot read the ids file"):
        read_ids(tmp_path / "nope.txt")
