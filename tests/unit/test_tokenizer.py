"""Torch-free tests of the CLIP tokenizer: layout of the id rows, truncation, cleaning and BPE.

Most tests use a synthetic vocab written to tmp_path (a handful of meaningful merges plus inert
filler), so they need neither open_clip nor its vocab file and the expected ids are computable by
hand. Parity with open_clip on real text lives in tests/export/test_tokenizer_parity.py.
"""

from __future__ import annotations

import gzip
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lenscope.client.inputs import tokenizer as tokmod
from lenscope.client.inputs.tokenizer import ClipTokenizer, default_vocab_path

N_MERGES = 49152 - 256 - 2
SOT, EOT = 49406, 49407
FIRST_MERGE_ID = 512


def _byte_index(ch: str) -> int:
    """Id of a printable ASCII character as a mid-word symbol: printable bytes come first."""
    return ord(ch) - ord("!")


def _eow(ch: str) -> int:
    """Id of a printable ASCII character ending a word (`x</w>`)."""
    return 256 + _byte_index(ch)


def write_vocab(path: Path, merges: list[tuple[str, str]]) -> Path:
    # Filler symbols contain '#', which the pre-tokenizer never leaves inside a letter run, and
    # are never produced by a merge, so these pairs can never fire.
    filler = [(f"#{i}", "#") for i in range(N_MERGES - len(merges))]
    lines = ["#version: synthetic"] + [f"{a} {b}" for a, b in merges + filler]
    path.write_bytes(gzip.compress("\n".join(lines).encode("utf-8")))
    return path


@pytest.fixture
def make_tok(tmp_path):
    def make(merges=(), context_length=8):
        return ClipTokenizer(write_vocab(tmp_path / "vocab.txt.gz", list(merges)), context_length)

    return make


@pytest.fixture
def tok(make_tok):
    return make_tok([("h", "i</w>")], context_length=8)


def test_batch_shape_dtype_and_layout(tok):
    out = tok.encode_batch(["hi", "ab", ""])
    assert out.shape == (3, 8) and out.dtype == np.int64
    assert out[0].tolist() == [SOT, FIRST_MERGE_ID, EOT, 0, 0, 0, 0, 0]
    assert out[1].tolist() == [SOT, _byte_index("a"), _eow("b"), EOT, 0, 0, 0, 0]
    assert out[2].tolist() == [SOT, EOT, 0, 0, 0, 0, 0, 0]


def test_encode_is_one_row_of_encode_batch(tok):
    row = tok.encode("hi ab")
    assert row.shape == (8,) and row.dtype == np.int64
    assert np.array_equal(row, tok.encode_batch(["hi ab"])[0])


def test_empty_batch(tok):
    out = tok.encode_batch([])
    assert out.shape == (0, 8) and out.dtype == np.int64


@pytest.mark.parametrize("text", ["", " ", "\t\n \r", "\u00a0\u3000", "&nbsp;", "\x00\x07"])
def test_empty_and_blank_text_is_sot_eot(tok, text):
    assert tok.encode(text).tolist() == [SOT, EOT] + [0] * 6


def test_special_ids_and_vocab_size(tok):
    assert (tok.sot_token_id, tok.eot_token_id, tok.vocab_size) == (SOT, EOT, 49408)


def test_truncation_keeps_first_ids_and_ends_with_eot(make_tok):
    tok = make_tok(context_length=6)
    letters = "a b c d e f g h"  # one id per letter
    ids = [_eow(c) for c in letters.split()]
    assert tok.encode(letters).tolist() == [SOT, *ids[:4], EOT]
    # Exactly context_length - 2 ids: fits, no zero, same as truncation would give.
    assert tok.encode("a b c d").tolist() == [SOT, *ids[:4], EOT]
    # context_length - 1 ids: the last one is dropped for EOT (open_clip overwrites the last slot).
    assert tok.encode("a b c d e").tolist() == [SOT, *ids[:4], EOT]
    assert tok.encode("a b c").tolist() == [SOT, *ids[:3], EOT, 0]


def test_truncation_can_split_a_word(make_tok):
    tok = make_tok(context_length=4)
    assert tok.encode("xyz").tolist() == [SOT, _byte_index("x"), _byte_index("y"), EOT]


def test_minimum_context_length(make_tok):
    assert make_tok(context_length=2).encode("hello").tolist() == [SOT, EOT]
    with pytest.raises(ValueError, match="context_length"):
        make_tok(context_length=1)


def test_bpe_merges_lowest_rank_first(make_tok):
    # "abc" -> a b c</w>; whichever pair has the lower rank is merged first, blocking the other.
    bc_first = make_tok([("b", "c</w>"), ("a", "b")])
    ab_first = make_tok([("a", "b"), ("b", "c</w>")])
    assert bc_first.text_ids("abc") == [_byte_index("a"), FIRST_MERGE_ID]
    assert ab_first.text_ids("abc") == [FIRST_MERGE_ID, _eow("c")]


def test_bpe_merges_non_overlapping_left_to_right(make_tok):
    tok = make_tok([("a", "a"), ("aa", "a</w>")])
    # a a a</w> -> aa a</w> -> aaa</w>
    assert tok.text_ids("aaa") == [FIRST_MERGE_ID + 1]
    # a a a a a</w> -> aa aa a</w> (pairs taken left to right, never overlapping) -> aa aaa</w>
    assert tok.text_ids("aaaaa") == [FIRST_MERGE_ID, FIRST_MERGE_ID + 1]
    # a a a a</w> -> aa a a</w>: what is left, (aa, a) and (a, a</w>), has no rank.
    assert tok.text_ids("aaaa") == [FIRST_MERGE_ID, _byte_index("a"), _eow("a")]


def test_bpe_results_are_cached(tok):
    tok.text_ids("hi hi hi")
    info = tok._word_ids.cache_info()
    assert info.hits >= 2 and info.maxsize is not None


def test_cleaning_whitespace_case_and_html(tok):
    base = tok.text_ids("hi ab")
    assert tok.text_ids("  HI\t\n\u00a0Ab  ") == base
    assert tok.text_ids("hi&nbsp;ab") == base
    # Doubly escaped entities are unescaped twice, as upstream.
    assert tok.text_ids("&amp;lt;") == tok.text_ids("<")
    assert tok.text_ids("&lt;") == [_eow("<")]


def test_cleaning_fixes_mojibake(tok):
    assert tok.text_ids("caf\u00c3\u00a9") == tok.text_ids("caf\u00e9")


def test_pretokenizer_splits_digits_and_contractions(tok):
    assert tok.text_ids("42") == [_eow("4"), _eow("2")]
    assert tok.text_ids("it's") == [_byte_index("i"), _eow("t"), _byte_index("'"), _eow("s")]


def test_non_ascii_is_byte_encoded(tok):
    # "é" is two UTF-8 bytes (0xC3 0xA9), both printable latin-1: one symbol each.
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    assert tok.text_ids("\u00e9") == [printable.index(0xC3), 256 + printable.index(0xA9)]


def test_special_token_literals_map_to_special_ids(tok):
    assert tok.text_ids("<start_of_text>hi<END_OF_TEXT>") == [SOT, FIRST_MERGE_ID, EOT]


def test_rejects_non_str(tok):
    with pytest.raises(TypeError, match="decode bytes"):
        tok.encode_batch([b"hi"])
    with pytest.raises(TypeError, match="sequence of str"):
        tok.encode_batch("hi")


def test_missing_and_malformed_vocab(tmp_path):
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab_16e6.txt.gz"):
        ClipTokenizer(tmp_path / "absent.txt.gz", 77)
    not_gzip = tmp_path / "plain.txt.gz"
    not_gzip.write_text("hello")
    with pytest.raises(ValueError, match="gzipped"):
        ClipTokenizer(not_gzip, 77)
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress(b"#version\na b\n"))
    with pytest.raises(ValueError, match="merge pairs"):
        ClipTokenizer(short, 77)


def test_default_vocab_path_error_names_the_file(monkeypatch):
    monkeypatch.setattr(tokmod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab_16e6.txt.gz"):
        default_vocab_path()


def test_default_vocab_path_points_into_open_clip():
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip not installed")
    path = default_vocab_path()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz" and path.parent.name == "open_clip"


def test_real_vocab_golden_ids():
    """Known CLIP ids, so a torch-free environment with the vocab still checks real BPE."""
    try:
        tok = ClipTokenizer(default_vocab_path(), 77)
    except FileNotFoundError:
        pytest.skip("open_clip vocab not available")
    assert tok.text_ids("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert tok.text_ids("Don't STOP!") == [847, 713, 1691, 256]
    assert tok.text_ids("Nike Air Max 90, men's size 10.5") == [
        5783, 1922, 3902, 280, 271, 267, 1656, 568, 3235, 272, 271, 269, 276,
    ]


def test_import_and_use_do_not_load_torch(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt.gz", [])
    script = textwrap.dedent(
        f"""
        import sys
        from lenscope.client.inputs.tokenizer import ClipTokenizer, default_vocab_path
        assert "torch" not in sys.modules, "import loaded torch"
        try:
            default_vocab_path()
        except FileNotFoundError:
            pass
        ClipTokenizer({str(vocab)!r}, 77).encode_batch(["a red shoe", "caf\\u00c3\\u00a9"])
        loaded = sorted(m for m in ("torch", "open_clip") if m in sys.modules)
        print("LOADED", loaded)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout
