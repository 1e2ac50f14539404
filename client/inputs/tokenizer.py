"""CLIP byte-level BPE tokenizer without torch, id-for-id identical to open_clip's SimpleTokenizer.

Why a second implementation: the Triton `text_tokenizer` python model and the search client must
tokenize without torch installed, yet the text encoder was trained on open_clip's ids, so any drift
(cleaning, special tokens, truncation) silently degrades retrieval. `tests/export` holds the parity
proof against open_clip; this module only depends on numpy, ftfy and regex.

Algorithm after OpenAI CLIP / open_clip `tokenizer.py` (MIT License, Copyright (c) 2021 OpenAI).
Behaviour matched to open_clip 3.3.0 with its default `clean="lower"` and no reduction mask:

* cleaning: `ftfy.fix_text`, `html.unescape` twice, strip, collapse whitespace, lowercase;
* `<start_of_text>` / `<end_of_text>` written in the text itself become the special ids;
* row = SOT + BPE ids + EOT, zero padded; when that exceeds `context_length` it is cut to
  `context_length` and the last slot is overwritten with EOT, i.e. SOT + first
  `context_length - 2` BPE ids + EOT. Every row therefore ends its content with EOT.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
# Line 0 of the file is a version header; open_clip keeps the next 49152 - 256 - 2 merges, giving
# 256 byte symbols + 256 end-of-word variants + merges + 2 specials = 49408 ids.
_N_MERGES = 49152 - 256 - 2
_BPE_CACHE_SIZE = 1 << 16


def default_vocab_path() -> Path:
    """The vocab shipped in an installed open_clip wheel, located without importing open_clip
    (which would import torch)."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / VOCAB_FILENAME
        if candidate.is_file():
            return candidate
    where = ", ".join(locations) if locations else "open_clip is not installed"
    raise FileNotFoundError(
        f"CLIP BPE vocab {VOCAB_FILENAME!r} not found ({where}); pass the path explicitly, e.g. the "
        f"copy the export step writes into the Triton model repository"
    )


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """Reversible map from the 256 byte values to printable characters, so BPE never sees
    whitespace or control characters. Printable latin-1 bytes map to themselves; the rest are
    shifted to code points 256.. in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in mapping)
    for n, b in enumerate(shifted):
        mapping[b] = chr(256 + n)
    return mapping  # insertion order (printable first) is the id order of the first 256 tokens


def clean_text(text: str) -> str:
    """open_clip's default ("lower") cleaning: fix mojibake, unescape (doubly escaped) HTML
    entities, collapse whitespace, lowercase."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """Text -> int64 token ids [context_length], the input of the CLIP text encoder.

    Build once (loading the vocab costs ~0.1 s) and reuse; BPE results are memoised per word.
    """

    def __init__(self, vocab_path: str | os.PathLike[str], context_length: int = 77) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 to hold SOT and EOT, got {context_length}")
        self.context_length = int(context_length)
        merges = _read_merges(Path(vocab_path))

        byte_symbols = list(_byte_to_unicode().values())
        vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self._encoder = {symbol: i for i, symbol in enumerate(vocab)}
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._byte_encoder = _byte_to_unicode()
        self.sot_token_id = self._encoder[SOT_TOKEN]
        self.eot_token_id = self._encoder[EOT_TOKEN]
        self.vocab_size = len(vocab)
        self._special_ids = {SOT_TOKEN: self.sot_token_id, EOT_TOKEN: self.eot_token_id}
        # Specials first so they win over the punctuation/letter runs; IGNORECASE as upstream
        # (only the contractions can be affected, the text is already lowercase).
        self._pattern = regex.compile(
            f"{SOT_TOKEN}|{EOT_TOKEN}"
            r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        # Per-instance cache: a module-level one would outlive the vocab it was built from.
        self._word_ids = lru_cache(maxsize=_BPE_CACHE_SIZE)(self._bpe_word_ids)

    def text_ids(self, text: str) -> list[int]:
        """BPE ids of the cleaned text, without SOT/EOT and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}; decode bytes first")
        ids: list[int] = []
        for piece in self._pattern.findall(clean_text(text)):
            special = self._special_ids.get(piece)
            if special is not None:
                ids.append(special)
                continue
            # Strict UTF-8, like upstream: a lone surrogate surviving ftfy raises here.
            word = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self._word_ids(word))
        return ids

    def encode(self, text: str) -> np.ndarray:
        """One text -> int64 [context_length]."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> int64 [len(texts), context_length]: SOT, ids, EOT, zero padding; over-long
        texts keep their first context_length - 2 ids and still end with EOT."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a sequence of str; use encode() for one text")
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        keep = self.context_length - 2
        for row, text in enumerate(texts):
            ids = self.text_ids(text)[:keep]
            out[row, 0] = self.sot_token_id
            out[row, 1 : len(ids) + 1] = ids
            out[row, len(ids) + 1] = self.eot_token_id
        return out

    def _bpe_word_ids(self, word: str) -> tuple[int, ...]:
        """Greedy BPE on one byte-encoded word: repeatedly merge the lowest-ranked adjacent pair
        (all its non-overlapping occurrences, left to right) until no ranked pair remains."""
        symbols = [*word[:-1], word[-1] + "</w>"]
        ranks = self._ranks
        while len(symbols) > 1:
            best_rank, best = None, None
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, pair
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(self._encoder[s] for s in symbols)


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """The merge list from the gzipped vocab, validated so a wrong or truncated file fails here
    rather than producing silently different ids."""
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE vocab not found: {path} (expected {VOCAB_FILENAME})")
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a gzipped UTF-8 BPE merge list ({VOCAB_FILENAME})") from exc
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: expected {_N_MERGES} merge pairs after the header line")
    return merges  # type: ignore[return-value]
