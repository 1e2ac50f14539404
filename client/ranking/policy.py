"""Which ranking a query type is served with, decided on held-out evidence: the do-no-harm rule.

For each query type (``text``, ``image``, ``image+text``) the index build compares, on held-out
pseudo-queries made from the catalog itself, the fused ranking (calibration + fusion weights) with
every single similarity signal on its raw cosine. ``decide`` publishes the fused ranking only if it
beats the best single raw signal; otherwise that raw signal ranks the query type. The rule, stated
once so a user can read it:

    metric: mean nDCG@10 over the type's queries (``self_check`` weighs pseudo-query kinds), R@10 (a relevant product in the top 10) as the
    tie-break. A raw signal is not fitted, so the raw signal is chosen on ALL pseudo-queries (fit and
    held-out part: more evidence, no leak): the one with the highest (nDCG@10, R@10). Only the fused
    ranking was fitted, so only fused-vs-raw needs the held-out part: fused is published iff there
    are >= ``min_queries`` held-out queries, fused R@10 is not below the strongest raw signal's
    held-out R@10 by more than one query's share (1 / n), and fused nDCG@10 > that signal's nDCG@10
    + ``margin``, or equal within ``margin`` and fused R@10 > its R@10 + ``margin``. With fewer
    held-out queries the pooled choice ranks (rule ``raw-too-few-held-out``): a catalog of a few dozen
    products still ranks by what all its pseudo-queries say (the type's first signal only without any).
    Each decision names the rule that fired (``RULES``).

A fit (calibration + weights) is bound to the model and the catalog it was fitted on
(``FitBinding``) and is applied only there (``binding_mismatch``). Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lenscope.client.ranking.fusion import SIGNALS, FusionWeights

QUERY_TYPES: tuple[str, ...] = ("text", "image", "image+text")
# The similarity signals a query type has, the first one being the default without evidence.
TYPE_SIGNALS: dict[str, tuple[str, ...]] = {
    "text": ("text_image", "text_title"),
    "image": ("visual", "image_title"),
    "image+text": ("visual", "text_image", "image_title", "text_title"),
}
FUSED = "fused"
METRIC = ("nDCG@10 (mean over query kinds), R@10 as tie-break; raw signal chosen on all pseudo-queries; fused "
          "published only if it beats the strongest raw signal on held-out pseudo-queries and loses R@10 on at most "
          "one of them")

# Which rule chose a query type's ranking (Decision.rule, RankingInfo.rule, the build log).
RULE_FUSED = "fused-beats-raw-held-out"  # fused beat the strongest raw signal on the held-out part
RULE_RAW_LOST = "raw-fused-lost-held-out"  # fused did not; the best raw signal on all pseudo-queries ranks
RULE_RAW_POOLED = "raw-too-few-held-out"  # too few held-out queries to publish fused: best raw on all of them
RULE_RAW_HELD_OUT = "raw-held-out"  # no pooled numbers given: best raw signal on the held-out part
RULE_NO_FIT = "raw-no-fit"  # nothing to fuse with: best raw signal
RULE_DEFAULT = "default-no-evidence"  # no pseudo-query at all: the type's first signal
RULE_GIVEN = "fused-given"  # a bound fit or supplied files: fused, not checked here
RULES = (RULE_FUSED, RULE_RAW_LOST, RULE_RAW_POOLED, RULE_RAW_HELD_OUT, RULE_NO_FIT, RULE_DEFAULT, RULE_GIVEN)

PolicySource = Literal["self-check", "bound fit", "supplied files", "legacy"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Score(_Strict):
    ndcg10: float
    r10: float


class Decision(_Strict):
    """One query type's ranking, which rule chose it and the numbers it was chosen on."""

    query_type: str
    ranked_by: str  # "fused" or a similarity signal ranked by its raw cosine
    reason: str
    rule: str = ""  # one of RULES ("" in policies written before the rules were named)
    n_queries: int = Field(0, ge=0)  # held-out pseudo-queries
    held_out: dict[str, Score] = {}  # "fused" and each single raw signal -> its held-out score
    n_pooled: int = Field(0, ge=0)  # all pseudo-queries (fit + held-out part)
    pooled: dict[str, Score] = {}  # each single raw signal -> its score on all pseudo-queries
    # this query type's own fused weights (the self-check fits one set per type, so text queries do
    # not share a signal balance with photo+text ones); None: the index's one fusion weights file
    weights: FusionWeights | None = None


class FitBinding(_Strict):
    """What a fit was fitted on: it is applied only to this model and this catalog."""

    model_hash: str
    catalog_fingerprint: str


class RankingPolicy(_Strict):
    """Stored with the index (``ranking_policy.json``); the engine reads it per query type."""

    schema_version: Literal[1] = 1
    source: PolicySource
    metric: str = METRIC
    binding: FitBinding | None = None
    decisions: dict[str, Decision]
    notes: dict[str, str] = {}

    def ranked_by(self, query_type: str) -> str:
        d = self.decisions.get(query_type)
        return d.ranked_by if d is not None else FUSED

    def weights_for(self, query_type: str, fused: FusionWeights) -> FusionWeights:
        """The type's own fused weights (else ``fused``, the index's weights file), or one-hot
        weights on the raw signal this query type ranks by."""
        by = self.ranked_by(query_type)
        if by != FUSED:
            return single_signal_weights(by)
        d = self.decisions.get(query_type)
        return d.weights if d is not None and d.weights is not None else fused


def single_signal_weights(signal: str) -> FusionWeights:
    """Weight 1 on one signal, 0 elsewhere, no bias: ``fuse`` then ranks by that signal alone and
    still reports every other present signal in the breakdown (with contribution 0)."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; known: {list(SIGNALS)}")
    return FusionWeights(bias=0.0, **{s: (1.0 if s == signal else 0.0) for s in SIGNALS})


def query_type_of(has_image: bool, has_text: bool) -> str:
    if has_image and has_text:
        return "image+text"
    return "image" if has_image else "text"


def _key(s: Score) -> tuple[float, float]:
    return (s.ndcg10, s.r10)


def _best(raw: Mapping[str, Score], query_type: str) -> str:
    return max(raw, key=lambda s: (_key(raw[s]), -TYPE_SIGNALS[query_type].index(s)))


def decide(query_type: str, scores: Mapping[str, Score], n_queries: int, *, pooled: Mapping[str, Score] | None = None,
           n_pooled: int = 0, fitted: bool | None = None, min_queries: int = 10, margin: float = 1e-3) -> Decision:
    """The do-no-harm rule for one query type (see the module docstring). ``scores`` holds the
    held-out numbers of ``"fused"`` (absent when no fit exists) and of the type's single raw
    signals; ``pooled`` the raw signals' numbers on every pseudo-query (fit + held-out part, nothing
    was fitted to them), which choose the raw signal. Without ``pooled`` the held-out numbers do.
    ``fitted``: whether a fit exists (default: whether ``scores`` has ``"fused"``; a fit with no
    held-out query of this type has no fused score but is not "no fit")."""
    held = dict(scores)
    pool = {s: pooled[s] for s in TYPE_SIGNALS[query_type] if pooled and s in pooled}
    raw_held = {s: scores[s] for s in TYPE_SIGNALS[query_type] if s in scores}
    common = dict(query_type=query_type, n_queries=n_queries, held_out=held, pooled=pool, n_pooled=n_pooled)
    if not pool and not raw_held:
        default = TYPE_SIGNALS[query_type][0]
        return Decision(ranked_by=default, rule=RULE_DEFAULT, **common,
                        reason=f"no pseudo-query evidence: ranked by the raw {default} cosine (default)")
    if pool:
        best, on = _best(pool, query_type), f"on all {n_pooled} pseudo-queries"
        b_pool = pool[best]
    else:
        best, on = _best(raw_held, query_type), f"on {n_queries} held-out queries"
        b_pool = raw_held[best]
    chosen = (f"ranked by the raw {best} cosine, the best single signal {on} "
              f"(nDCG@10 {b_pool.ndcg10:.3f} / R@10 {b_pool.r10:.3f})")
    fused = scores.get(FUSED)
    if not (fused is not None if fitted is None else fitted):
        return Decision(ranked_by=best, rule=RULE_NO_FIT, reason=f"no fit: {chosen}", **common)
    if fused is None or n_queries < min_queries or not raw_held:
        return Decision(ranked_by=best, rule=RULE_RAW_POOLED if pool else RULE_RAW_HELD_OUT, **common,
                        reason=f"only {n_queries} held-out queries (< {min_queries}), fused not published: {chosen}")
    rival = _best(raw_held, query_type)  # fused must beat the strongest raw signal on the held-out part
    b = raw_held[rival]
    if fused.r10 < b.r10 - 1.0 / n_queries - 1e-4:  # 1e-4: the scores are rounded to 4 decimals
        why = (f"fused R@10 {fused.r10:.3f} loses more than one held-out query against {rival} "
               f"({b.r10:.3f})")
    elif fused.ndcg10 > b.ndcg10 + margin or (abs(fused.ndcg10 - b.ndcg10) <= margin and fused.r10 > b.r10 + margin):
        return Decision(ranked_by=FUSED, rule=RULE_FUSED, **common,
                        reason=(f"fused nDCG@10 {fused.ndcg10:.3f} / R@10 {fused.r10:.3f} beats the best raw "
                                f"signal {rival} ({b.ndcg10:.3f} / {b.r10:.3f}) on {n_queries} held-out queries"))
    else:
        why = (f"fused nDCG@10 {fused.ndcg10:.3f} / R@10 {fused.r10:.3f} does not beat {rival} "
               f"({b.ndcg10:.3f} / {b.r10:.3f}) on {n_queries} held-out queries")
    return Decision(ranked_by=best, rule=RULE_RAW_HELD_OUT if not pool else RULE_RAW_LOST, reason=f"{why}: {chosen}",
                    **common)


def binding_mismatch(binding: FitBinding | None, model_hash: str, catalog_fingerprint: str) -> str | None:
    """Why a fit may not be applied here (None: it may). A fit without a binding is never applied."""
    if binding is None:
        return "the fit records no model and catalog it was fitted on, so it is applied nowhere else"
    if binding.model_hash != model_hash:
        return f"the fit was made for model {binding.model_hash}, this index is built by model {model_hash}"
    if binding.catalog_fingerprint != catalog_fingerprint:
        return (f"the fit was made on catalog {binding.catalog_fingerprint}, this catalog is "
                f"{catalog_fingerprint}")
    return None


def fused_everywhere(source: PolicySource, reason: str, binding: FitBinding | None = None) -> RankingPolicy:
    """Every query type fused (a bound fit, or files the user supplied): no held-out check here."""
    return RankingPolicy(source=source, binding=binding, decisions={
        t: Decision(query_type=t, ranked_by=FUSED, rule=RULE_GIVEN, reason=reason) for t in QUERY_TYPES})
