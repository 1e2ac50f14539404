"""A page's query: what the search form, the facet checkboxes and the URL carry, checked before
anything is sent to the search service.

Parameters (the same in the query string of ``GET /`` and the form of ``POST /search``):

- ``q``: query text;
- ``image``: an uploaded photo (form only);
- ``like``: a catalog image path: "search with this image" (read from the catalog, never uploaded);
- ``f``: ``facet:value``, repeatable: values of one facet are OR-ed, facets AND-ed (the API's filters);
- ``k``: number of results.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from PIL import Image

from lenscope.client.api import search_pb2
from lenscope.client.core.modelspec import InputLimits, PreprocessConfig
from lenscope.client.inputs.preprocess import ACCEPTED_FORMATS, ImageInputError, check_header
from lenscope.client.web.backend import SearchFailure
from lenscope.client.web.settings import MiB, WebSettings

# The formats the model server decodes (lenscope.client.inputs.preprocess.ACCEPTED_FORMATS; the JPEG
# plugin also opens MPO), named for people.
ACCEPTED_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"
# The page does not know the served model's spec: its header checks use the default limits and
# preprocessing (a pre-check; the model server still applies its own).
_HEADER_LIMITS = InputLimits()
_HEADER_PREPROCESS = PreprocessConfig()
_TOO_BIG = ("too_many_pixels", "decompression_bomb", "extreme_aspect_ratio")


def _bad(message: str, code: str = "bad_request", status: int = 400, title: str = "Invalid search") -> SearchFailure:
    return SearchFailure(status, title, message, code)


@dataclass(frozen=True)
class PageQuery:
    text: str = ""
    like: str = ""
    filters: tuple[tuple[str, tuple[str, ...]], ...] = ()
    top_k: int = 24
    upload_name: str = ""  # file name of an uploaded photo, when there is one
    _selected: frozenset[tuple[str, str]] = field(default=frozenset(), repr=False, compare=False)

    @property
    def has_input(self) -> bool:
        return bool(self.text or self.like or self.upload_name)

    def is_selected(self, facet: str, value: str) -> bool:
        return (facet, value) in self._selected

    def to_request(self, image: bytes | None) -> search_pb2.SearchRequest:
        request = search_pb2.SearchRequest(
            filters=[search_pb2.Filter(facet=f, values=list(v)) for f, v in self.filters], top_k=self.top_k
        )
        if image is not None:
            request.image = image
            request.explain = True  # the attributes the model sees in the photo, shown above the results
        if self.text:
            request.text = self.text
        return request

    def query_string(self) -> str:
        """The URL query of this page (an uploaded photo cannot travel in a URL, so it is left out)."""
        params: list[tuple[str, str]] = []
        if self.text:
            params.append(("q", self.text))
        if self.like:
            params.append(("like", self.like))
        params += [("f", f"{facet}:{value}") for facet, values in self.filters for value in values]
        params.append(("k", str(self.top_k)))
        return urlencode(params)


def parse_filters(exprs: Iterable[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``["color:red", "color:blue", "category:dress"]`` -> ``(("color", ("red", "blue")), ("category", ("dress",)))``."""
    grouped: dict[str, list[str]] = {}
    for expr in exprs:
        facet, sep, value = expr.partition(":")
        facet, value = facet.strip(), value.strip()
        if not sep or not facet or not value:
            raise _bad(f"filter {expr!r} must look like facet:value")
        values = grouped.setdefault(facet, [])
        if value not in values:
            values.append(value)
    return tuple((f, tuple(v)) for f, v in grouped.items())


def parse_query(
    text: str | None, like: str | None, filters: Iterable[str], top_k: str | None, settings: WebSettings,
    upload_name: str = "",
) -> PageQuery:
    parsed = parse_filters(filters)
    k = settings.top_k
    if top_k not in (None, ""):
        try:
            k = int(top_k)
        except ValueError:
            raise _bad(f"k must be a number of results, not {top_k!r}") from None
        if not 1 <= k <= settings.max_top_k:
            raise _bad(f"k must be between 1 and {settings.max_top_k}")
    return PageQuery(
        text=(text or "").strip(), like=(like or "").strip(), filters=parsed, top_k=k, upload_name=upload_name,
        _selected=frozenset((f, v) for f, values in parsed for v in values),
    )


def _mb(n: int) -> str:
    return f"{n / MiB:.1f} MB" if n >= MiB // 10 else f"{n / 1024:.1f} KB"


def too_large(size: int, settings: WebSettings) -> SearchFailure:
    return _bad(f"The photo is {_mb(size)}; the limit is {_mb(settings.max_upload_bytes)}. "
                "Use a smaller or more compressed photo.", "too_large", 413, "Photo too large")


def check_upload(data: bytes, filename: str, settings: WebSettings, size: int | None = None) -> bytes:
    """The photo's bytes if they are a readable image within the size limit; else a SearchFailure.
    ``size``: the upload's full size when ``data`` was read only up to just over the limit.

    Dimensions, pixel count and aspect ratio are checked from the header (the model server's own
    ``check_header``) before anything is decoded; ``verify`` then checks the structure without
    decoding pixels."""
    if len(data) > settings.max_upload_bytes:
        raise too_large(max(len(data), size or 0), settings)
    name = filename or "The upload"
    try:
        # the byte cap is the page's own (checked above), not the default model's
        check_header(data, _HEADER_LIMITS.model_copy(update={"max_image_bytes": settings.max_upload_bytes}),
                     _HEADER_PREPROCESS)
    except ImageInputError as err:
        if err.reason in _TOO_BIG:
            raise _bad(f"{name!r} cannot be searched with: {err}.", err.reason, 413, "Photo too large") from None
        raise _bad(f"{name!r} is not an image in an accepted format. Upload a {ACCEPTED_NAMES} photo.",
                   "not_an_image", 415, "Not an image") from None
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            img.verify()  # headers and checksums, without decoding every pixel
    except Exception:  # noqa: BLE001 - Pillow raises many types for bytes that are not an image
        raise _bad(f"{name!r} is not an image. Upload a {ACCEPTED_NAMES} photo.", "not_an_image", 415,
                   "Not an image") from None
    return data
