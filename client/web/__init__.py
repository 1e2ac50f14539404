"""``lenscope serve web``: the demo page in front of the gRPC search service.

A small Starlette app: Jinja2 renders every piece of HTML on the server (so escaping is in one place
and the pages are testable without a browser); one vanilla JS file swaps result fragments in for
photo uploads, facet toggles and "search with this image". Modules:

- :mod:`.settings`    what the app is pointed at (search target, catalog, limits)
- :mod:`.backend`     the gRPC client: one channel, a deadline per call, status -> user message
- :mod:`.image_store` catalog images served safely (containment, symlinks, types, ETag/Cache-Control)
- :mod:`.query`       parsing a form / query string into a search request, upload checks
- :mod:`.results`     a ``SearchResponse`` turned into what the templates show
- :mod:`.app`         the routes
"""

from lenscope.client.web.app import create_app
from lenscope.client.web.settings import WebSettings

__all__ = ["WebSettings", "create_app"]
