"""Parity: lenscope's torch-free tokenizer gives exactly open_clip's ids.

The corpus is generated from a fixed seed and aims at the places a re-implementation drifts:
cleaning (ftfy, HTML entities, whitespace, case), byte-level BPE on non-ASCII, pre-tokenizer
splits, special-token literals, and truncation of over-long text.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

pytestmark = pytest.mark.export

open_clip = pytest.importorskip("open_clip")
from open_clip.tokenizer import SimpleTokenizer  # noqa: E402

from lenscope.client.inputs.tokenizer import ClipTokenizer, default_vocab_path  # noqa: E402

SEED = 20240611
CONTEXT_LENGTHS = (77, 32, 8)

BRANDS = ["Nike", "adidas", "IKEA", "Levi's", "Dr. Martens", "L'Oréal", "H&M", "Sony", "LEGO", "3M"]
ADJECTIVES = ["Red", "navy-blue", "Slim Fit", "waterproof", "Vintage", "ultra-light", "XL", "100%"]
NOUNS = ["Running Shoes", "T-Shirt", "sofa", "Backpack", "jeans", "Headphones", "mug", "Lamp"]
EXTRAS = ["(Pack of 2)", "- Size 10.5", "w/ USB-C", "[2024 model]", "#1 Best Seller", "$19.99",
          "50cm x 30cm", "men's/women's", "don't miss!", "it'll fit", "I'M", "you've", "we'd"]
ACCENTED = ["café", "crème brûlée", "Ærøskøbing", "naïve", "Straße", "İstanbul", "Ωmega",
            "Москва", "ĳssel", "ﬁne", "e\u0301te\u0301", "Ångström", "Łódź", "Ελληνικά", "ǅemal"]
CJK = ["日本語のテキスト", "中文商品标题", "한국어 상품", "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ", "東京タワー", "红色连衣裙",
       "ｶﾀｶﾅ", "〜限定〜", "羽绒服 冬季 女款", "スニーカー２７ｃｍ"]
RTL = ["العربية", "حذاء رياضي أحمر", "עברית", "נעלי ריצה", "\u200fمرحبا\u200f", "\u202bשלום\u202c",
       "٣٤٥ ريال", "קפה ☕"]
EMOJI = ["🔥", "👟", "👍🏽", "👨‍👩‍👧‍👦", "🇯🇵", "❤️", "✨✨", "🏳️‍🌈", "😂😂😂", "☕"]
CONTROL = ["\x00", "\x07", "\x1b[31m", "\x7f", "\x85", "\x9c", "\t", "\n", "\r\n", "\u200b",
           "\u200d", "\ufeff", "\u2028", "\u00ad", "\ufffd", "\ud83d", "\udca9"]
ENTITIES = ["&amp;", "&lt;b&gt;", "&quot;", "&#39;", "&#x27;", "&nbsp;", "&eacute;", "&amp;amp;",
            "&amp;lt;", "&copy;", "&#128293;", "&notanentity;", "&", "<br/>", "&#0;", "&ampx"]
SPECIAL = ["<start_of_text>", "<end_of_text>", "<START_OF_TEXT>", "<end_of_text/>", "<|endoftext|>"]
BLANKS = ["", " ", "  ", "\t", "\n", "\r\n\t ", "\u00a0", "\u3000", "\u2003\u2009", " \u200b "]


def _title(rng: random.Random) -> str:
    parts = [rng.choice(BRANDS), rng.choice(ADJECTIVES), rng.choice(NOUNS)]
    parts += rng.sample(EXTRAS, rng.randint(0, 3))
    text = " ".join(parts)
    case = rng.random()
    return text.upper() if case < 0.1 else text.lower() if case < 0.2 else text


def _sprinkle(rng: random.Random, base: str, pool: list[str], k: int) -> str:
    pieces = base.split(" ")
    for _ in range(k):
        pieces.insert(rng.randint(0, len(pieces)), rng.choice(pool))
    return rng.choice([" ", "", "  "]).join(pieces)


def _mojibake(rng: random.Random, text: str) -> str:
    raw = text.encode("utf-8")
    codec = rng.choice(["latin-1", "cp1252", "cp1252", "mac_roman"])
    broken = raw.decode(codec, errors="replace")
    if rng.random() < 0.2:  # doubly mis-decoded
        broken = broken.encode("utf-8").decode("latin-1")
    return broken


def _random_codepoints(rng: random.Random, n: int) -> str:
    planes = [(0, 0x80), (0x80, 0x800), (0x800, 0x10000), (0x10000, 0x110000), (0xD800, 0xE000),
              (0x0300, 0x0370), (0xE000, 0xF900), (0x1F300, 0x1FAFF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(planes)
        out.append(chr(rng.randrange(lo, hi)))
    return "".join(out)


def build_corpus(seed: int = SEED) -> dict[str, list[str]]:
    rng = random.Random(seed)
    corpus: dict[str, list[str]] = {
        "titles": [_title(rng) for _ in range(300)],
        "accents": [_sprinkle(rng, _title(rng), ACCENTED, rng.randint(1, 3)) for _ in range(100)],
        "cjk": [_sprinkle(rng, rng.choice(CJK), CJK + [_title(rng)], rng.randint(0, 3)) for _ in range(100)],
        "rtl": [_sprinkle(rng, rng.choice(RTL), RTL + ["Nike", "42"], rng.randint(0, 3)) for _ in range(80)],
        "emoji": [_sprinkle(rng, _title(rng), EMOJI, rng.randint(1, 4)) for _ in range(80)],
        "control": [_sprinkle(rng, _title(rng), CONTROL, rng.randint(1, 4)) for _ in range(80)],
        "html": [_sprinkle(rng, _title(rng), ENTITIES, rng.randint(1, 4)) for _ in range(100)],
        "mojibake": [
            _mojibake(rng, _sprinkle(rng, _title(rng), ACCENTED + CJK + EMOJI + ["“quoted”", "—", "…"], 2))
            for _ in range(100)
        ],
        "special": [_sprinkle(rng, _title(rng), SPECIAL, rng.randint(1, 2)) for _ in range(40)],
        "blank": BLANKS + [rng.choice(BLANKS) * rng.randint(1, 50) for _ in range(20)],
        "random_codepoints": [_random_codepoints(rng, rng.randint(1, 40)) for _ in range(200)],
    }
    long_texts = [" ".join(_title(rng) for _ in range(rng.randint(10, 120))) for _ in range(30)]
    long_texts += [
        "supercalifragilistic" * 40,  # one 800-character word
        "1234567890" * 60,  # digits are single pieces
        "红色连衣裙" * 120,  # one long CJK letter run
        "!?" * 300,  # one long punctuation run
        " ".join(EMOJI * 20),
        "&amp;" * 200,
        "a " * 500,
        "\u00e9" * 700,
    ]
    long_texts += [_sprinkle(rng, long_texts[i], ACCENTED + EMOJI + RTL, 20) for i in range(12)]
    corpus["long"] = long_texts
    corpus["mixed"] = [
        _sprinkle(rng, _title(rng), ACCENTED + CJK + RTL + EMOJI + CONTROL + ENTITIES, rng.randint(3, 8))
        for _ in range(150)
    ]
    return corpus


def _flat(corpus: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(cat, text) for cat, texts in corpus.items() for text in texts]


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str]]:
    return _flat(build_corpus())


@pytest.fixture(scope="module")
def reference() -> SimpleTokenizer:
    return SimpleTokenizer()


@pytest.fixture(scope="module")
def ours() -> ClipTokenizer:
    return ClipTokenizer(default_vocab_path(), 77)


def _outcome(fn, text):
    try:
        return list(fn(text))
    except Exception as exc:  # parity includes failing the same way
        return ("raises", type(exc).__name__)


def test_corpus_is_large_deterministic_and_varied(corpus, reference):
    assert len(corpus) >= 1000
    assert _flat(build_corpus()) == corpus
    assert _flat(build_corpus(SEED + 1)) != corpus
    lengths = [len(reference.encode(t)) for _, t in corpus]
    assert sum(n + 2 > 77 for n in lengths) >= 30, "too few texts exercise truncation at 77"
    assert sum(n == 0 for n in lengths) >= 20, "too few texts that clean to nothing"


def test_unpadded_ids_match_open_clip(corpus, reference, ours):
    mismatches = [
        (cat, text)
        for cat, text in corpus
        if _outcome(ours.text_ids, text) != _outcome(reference.encode, text)
    ]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]!r}"


@pytest.mark.parametrize("context_length", CONTEXT_LENGTHS)
def test_padded_rows_match_open_clip(corpus, reference, context_length):
    texts = [t for _, t in corpus]
    ours = ClipTokenizer(default_vocab_path(), context_length)
    expected = reference(texts, context_length=context_length).numpy()
    got = ours.encode_batch(texts)
    assert got.dtype == np.int64 and got.shape == expected.shape == (len(texts), context_length)
    bad = np.flatnonzero((got != expected).any(axis=1))
    assert bad.size == 0, f"{bad.size} rows differ, first: {[corpus[i] for i in bad[:3]]!r}"
    truncated = (got[:, -1] != 0).sum()
    assert truncated > 0  # the comparison really covered over-long rows


def test_matches_get_tokenizer_for_a_builtin_model(corpus, ours):
    reference = open_clip.get_tokenizer("ViT-B-32")
    assert isinstance(reference, SimpleTokenizer)  # otherwise this parity claim does not apply
    texts = [t for _, t in corpus[::7]]
    assert np.array_equal(ours.encode_batch(texts), reference(texts).numpy())


def test_single_encode_matches(corpus, reference, ours):
    for _, text in corpus[::50]:
        assert np.array_equal(ours.encode(text), reference(text)[0].numpy()), text
