from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Filter(_message.Message):
    __slots__ = ("facet", "values")
    FACET_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    facet: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, facet: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("image", "text", "filters", "facets", "top_k", "explain")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    FACETS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    text: str
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    facets: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    explain: bool
    def __init__(self, image: _Optional[bytes] = ..., text: _Optional[str] = ..., filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ..., facets: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., explain: _Optional[bool] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("product_id", "title", "image", "score", "breakdown", "raw", "calibrated", "attributes", "popularity")
    class BreakdownEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class RawEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class CalibratedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BREAKDOWN_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    POPULARITY_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    title: str
    image: str
    score: float
    breakdown: _containers.ScalarMap[str, float]
    raw: _containers.ScalarMap[str, float]
    calibrated: _containers.ScalarMap[str, float]
    attributes: _containers.ScalarMap[str, str]
    popularity: float
    def __init__(self, product_id: _Optional[str] = ..., title: _Optional[str] = ..., image: _Optional[str] = ..., score: _Optional[float] = ..., breakdown: _Optional[_Mapping[str, float]] = ..., raw: _Optional[_Mapping[str, float]] = ..., calibrated: _Optional[_Mapping[str, float]] = ..., attributes: _Optional[_Mapping[str, str]] = ..., popularity: _Optional[float] = ...) -> None: ...

class FacetValueCount(_message.Message):
    __slots__ = ("value", "count")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    value: str
    count: int
    def __init__(self, value: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class FacetCount(_message.Message):
    __slots__ = ("facet", "values")
    FACET_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    facet: str
    values: _containers.RepeatedCompositeFieldContainer[FacetValueCount]
    def __init__(self, facet: _Optional[str] = ..., values: _Optional[_Iterable[_Union[FacetValueCount, _Mapping]]] = ...) -> None: ...

class OverFetch(_message.Message):
    __slots__ = ("candidates", "rounds", "filled", "hit_bound")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    FILLED_FIELD_NUMBER: _ClassVar[int]
    HIT_BOUND_FIELD_NUMBER: _ClassVar[int]
    candidates: int
    rounds: int
    filled: bool
    hit_bound: bool
    def __init__(self, candidates: _Optional[int] = ..., rounds: _Optional[int] = ..., filled: _Optional[bool] = ..., hit_bound: _Optional[bool] = ...) -> None: ...

class AttributeProbabilities(_message.Message):
    __slots__ = ("probabilities",)
    class ProbabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.ScalarMap[str, float]
    def __init__(self, probabilities: _Optional[_Mapping[str, float]] = ...) -> None: ...

class HeldOutScore(_message.Message):
    __slots__ = ("ndcg10", "r10")
    NDCG10_FIELD_NUMBER: _ClassVar[int]
    R10_FIELD_NUMBER: _ClassVar[int]
    ndcg10: float
    r10: float
    def __init__(self, ndcg10: _Optional[float] = ..., r10: _Optional[float] = ...) -> None: ...

class RankingInfo(_message.Message):
    __slots__ = ("query_type", "ranked_by", "calibrated_signals", "raw_signals", "source", "reason", "held_out", "rule", "pooled")
    class HeldOutEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: HeldOutScore
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[HeldOutScore, _Mapping]] = ...) -> None: ...
    class PooledEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: HeldOutScore
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[HeldOutScore, _Mapping]] = ...) -> None: ...
    QUERY_TYPE_FIELD_NUMBER: _ClassVar[int]
    RANKED_BY_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    RAW_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    POOLED_FIELD_NUMBER: _ClassVar[int]
    query_type: str
    ranked_by: str
    calibrated_signals: _containers.RepeatedScalarFieldContainer[str]
    raw_signals: _containers.RepeatedScalarFieldContainer[str]
    source: str
    reason: str
    held_out: _containers.MessageMap[str, HeldOutScore]
    rule: str
    pooled: _containers.MessageMap[str, HeldOutScore]
    def __init__(self, query_type: _Optional[str] = ..., ranked_by: _Optional[str] = ..., calibrated_signals: _Optional[_Iterable[str]] = ..., raw_signals: _Optional[_Iterable[str]] = ..., source: _Optional[str] = ..., reason: _Optional[str] = ..., held_out: _Optional[_Mapping[str, HeldOutScore]] = ..., rule: _Optional[str] = ..., pooled: _Optional[_Mapping[str, HeldOutScore]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "facets", "timings_ms", "model_hash", "index_version", "over_fetch", "query_attributes", "request_id", "ranking")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class QueryAttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AttributeProbabilities
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AttributeProbabilities, _Mapping]] = ...) -> None: ...
    HITS_FIELD_NUMBER: _ClassVar[int]
    FACETS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    OVER_FETCH_FIELD_NUMBER: _ClassVar[int]
    QUERY_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    facets: _containers.RepeatedCompositeFieldContainer[FacetCount]
    timings_ms: _containers.ScalarMap[str, float]
    model_hash: str
    index_version: str
    over_fetch: OverFetch
    query_attributes: _containers.MessageMap[str, AttributeProbabilities]
    request_id: str
    ranking: RankingInfo
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., facets: _Optional[_Iterable[_Union[FacetCount, _Mapping]]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., model_hash: _Optional[str] = ..., index_version: _Optional[str] = ..., over_fetch: _Optional[_Union[OverFetch, _Mapping]] = ..., query_attributes: _Optional[_Mapping[str, AttributeProbabilities]] = ..., request_id: _Optional[str] = ..., ranking: _Optional[_Union[RankingInfo, _Mapping]] = ...) -> None: ...
