"""Settings of the gRPC search service (``lenscope serve search``): ONE object, from flags and
``LENSCOPE_*`` variables, documented in docs/search-settings.md.

Validated when constructed, before any port is bound: a bad limit or a missing certificate fails at
startup naming the field, not on the first request. Each limit exists for latency discipline:
``max_inflight`` bounds concurrent engine work (excess is shed with RESOURCE_EXHAUSTED rather than
queued), ``default_deadline_s`` applies when a caller sends no deadline, and Triton gets only
``triton_deadline_fraction`` of the caller's remaining time (applied once, by the engine), keeping the
rest for retrieval, fusing, facets and the reply.

The same object carries where Triton is (one address, a comma list, or ``dns:///name:port``, dialled
with client-side round-robin), the vector backend (and the Milvus uri + ``LENSCOPE_MILVUS_TOKEN``) and
the engine's depth knobs, so nothing the service does is configured anywhere else.
``ServiceSettings.from_environment`` (what the CLI uses) also refuses ``LENSCOPE_*`` variables that
are not settings (``extra="forbid"``): a misspelt variable fails at startup naming
itself instead of being silently ignored. Variables other lenscope tools read are listed in
``FOREIGN_VARIABLES``.
"""

from __future__ import annotations

import os
from typing import Literal, Self

from pydantic import Field, FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from lenscope.client.search.engine import SearchSettings
from lenscope.client.search.models import SearchQuery

ENV_PREFIX = "LENSCOPE_"

# LENSCOPE_* variables that belong to other lenscope commands, tests and benchmarks: not settings of
# the search service, so their presence is not a typo (tests/unit/test_search_settings.py checks this
# list against every LENSCOPE_ name the repository mentions).
FOREIGN_VARIABLES = frozenset({
    "LENSCOPE_TRITON_ADMIN_KEY",  # serve triton, the Triton image, k8s
    "LENSCOPE_TRITON_OPEN_ADMIN",  # the Triton image (docker/triton/entrypoint.sh)
    "LENSCOPE_SEARCH_TARGET",  # web demo
    "LENSCOPE_CACHE",
    "LENSCOPE_BENCH_WORK", "LENSCOPE_PERF_ANALYZER", "LENSCOPE_NO_HARM_REPORT",  # benchmarks
    "LENSCOPE_AUDIT_STRICT", "LENSCOPE_PIP_AUDIT", "LENSCOPE_PYPI_JSON_URL", "LENSCOPE_CHECKOV",  # audits
    "LENSCOPE_NO_SKIP", "LENSCOPE_TEST_KILL_AFTER_CHUNKS", "LENSCOPE_TEST_MILVUS_TOKEN",  # tests
})

MiB = 1024 * 1024


def _query_top_k_limit() -> int:
    """The largest top_k a SearchQuery accepts (its own `le` bound), so the two cannot disagree."""
    for constraint in SearchQuery.model_fields["top_k"].metadata:
        if (le := getattr(constraint, "le", None)) is not None:
            return int(le)
    raise RuntimeError("SearchQuery.top_k lost its upper bound")  # pragma: no cover


QUERY_TOP_K_LIMIT = _query_top_k_limit()


class ServiceSettings(BaseSettings):
    """Where the service listens, its limits and TLS. Env: ``LENSCOPE_<FIELD>`` (e.g. LENSCOPE_GRPC_PORT)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    host: str = Field(
        "127.0.0.1", min_length=1, description="listen address for gRPC and metrics; 0.0.0.0 in a container"
    )
    grpc_port: int = Field(50051, ge=0, le=65535, description="0 = any free port (tests)")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics; 0 = any free port")

    max_inflight: int = Field(
        4, ge=1, description="searches running in the engine at once; more are shed. Sizes every pool of a "
        "request (service/servicer.py). 4 on 2 cores (the cpu profile's 2 embedding instances): side by side "
        "at 2.4x saturation, four runs of 3 pooled rounds each (README, Benchmarks), 8 served 0-8 % "
        "more searches with about twice the OK latency (more requests waiting in Triton's queue: Little's "
        "law), 2 served 13-17 % fewer, and 32 let requests queue until they missed their deadline. Raise it "
        "with the model server's capacity"
    )
    spare_threads: int = Field(
        8, ge=1, description="gRPC handler threads beyond max_inflight: they answer invalid and health calls, and calls shed by the servicer after gRPC's polling thread let them in"
    )
    max_queued_rpcs: int = Field(
        0, ge=0, description="RPCs waiting for a handler thread before gRPC itself answers RESOURCE_EXHAUSTED; "
        "0: gRPC rejects the excess on its polling thread before any work, and no call waits unseen by its deadline "
        "(side by side with 64 in benchmarks/reports/load.md: within the shared box's noise)"
    )

    gil_switch_interval_ms: float = Field(
        5.0, gt=0, le=100, description="Python's thread switch interval in the `serve search` process "
        "(sys.setswitchinterval). gRPC's polling thread, which answers shed calls itself, waits for the GIL while "
        "max_inflight engine threads hold it in turns; a shorter interval answers it sooner at some cost in "
        "throughput. 5.0 is Python's own default; benchmarks/load.py measures another value side by side"
    )

    default_deadline_s: float = Field(1.0, gt=0, description="deadline for callers that send none")
    triton_deadline_fraction: float = Field(
        0.8, gt=0, lt=1, description="share of the caller's remaining time Triton may use (applied once); "
        "calls without a caller (health, manifest) get this share of default_deadline_s"
    )

    triton_url: str = Field(
        "127.0.0.1:8001", min_length=1,
        description="Triton gRPC: host:port, a comma list of ip:port (round-robin over them), or "
        "dns:///name:port (round-robin over every address the name resolves to, e.g. a headless Service)",
    )
    triton_ca: FilePath | None = Field(None, description="talk TLS to Triton, trusting this CA (PEM)")
    triton_cert: FilePath | None = Field(None, description="client certificate for mutual TLS to Triton")
    triton_key: FilePath | None = Field(None, description="client key of triton_cert")
    triton_keepalive_s: float = Field(
        30.0, ge=1, description="HTTP/2 keepalive ping interval on Triton connections (while calls run)"
    )
    triton_max_connection_age_s: float = Field(
        60.0, ge=1, description="the Triton channel is replaced (and the name re-resolved) after this long, "
        "so new Triton pods get traffic; 0 is not allowed"
    )

    vector_backend: Literal["auto", "faiss", "milvus"] = Field(
        "auto", description="auto = whatever the published bundle was built with; faiss / milvus also "
        "refuse a bundle of the other kind"
    )
    milvus_uri: str | None = Field(
        None, description="Milvus server (http://host:19530) the service reads a milvus bundle's collection "
        "from; default: the uri the bundle was built against"
    )
    milvus_token: SecretStr | None = Field(
        None, description="Milvus token ('user:password' or an API key); the one token variable, "
        "LENSCOPE_MILVUS_TOKEN, also read by `lenscope index build --backend milvus`"
    )

    rerank_depth: int = Field(100, ge=1, le=10_000, description="filtered candidates re-ranked per query")
    max_candidates: int = Field(2000, ge=10, le=100_000, description="over-fetch bound of the ANN search")
    index_poll_s: float = Field(
        2.0, ge=0, description="how often the index root is checked for a newly published version, served live "
        "(search/live.py); 0 = only on SIGHUP"
    )

    max_request_bytes: int = Field(
        12 * MiB, ge=1024, description="gRPC receive cap: larger messages are refused by the transport"
    )
    max_image_bytes: int = Field(
        10 * MiB, ge=1, description="largest encoded query image; must stay below max_request_bytes"
    )
    max_text_chars: int = Field(1000, ge=1)
    default_top_k: int = Field(10, ge=1)
    max_top_k: int = Field(100, ge=1, le=QUERY_TOP_K_LIMIT)

    health_check_interval_s: float = Field(2.0, gt=0, description="how often backend.ready() is re-checked")
    shutdown_grace_s: float = Field(5.0, ge=0, description="in-flight requests get this long on stop")

    tls_cert: FilePath | None = Field(None, description="PEM server certificate (chain); enables TLS with tls_key")
    tls_key: FilePath | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: FilePath | None = Field(
        None, description="PEM CA bundle: clients must present a certificate it signed (mutual TLS)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_image_bytes >= self.max_request_bytes:
            # An image at the cap would be refused by the transport before validation could explain why.
            raise ValueError(
                f"max_image_bytes ({self.max_image_bytes}) must be below max_request_bytes ({self.max_request_bytes})"
            )
        if self.default_top_k > self.max_top_k:
            raise ValueError(f"default_top_k ({self.default_top_k}) exceeds max_top_k ({self.max_top_k})")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        return self

    @classmethod
    def from_environment(cls, **overrides: object) -> "ServiceSettings":
        """Flags (`overrides`) over LENSCOPE_* variables over defaults; unknown LENSCOPE_* variables are
        refused (ValidationError, "extra_forbidden", naming the variable)."""
        return _StrictServiceSettings(**overrides)

    def search_settings(self) -> SearchSettings:
        """The engine's settings: the one deadline fraction, the depth knobs, the default deadline."""
        return SearchSettings(rerank_depth=self.rerank_depth, max_candidates=self.max_candidates,
                              default_deadline_s=self.default_deadline_s, triton_share=self.triton_deadline_fraction)

    def index_options(self) -> dict[str, dict[str, object]]:
        """Per-backend options for opening the published bundle's index (only the bundle's own backend
        uses its entry): where the Milvus collection is read from, and the token."""
        milvus: dict[str, object] = {}
        if self.milvus_uri is not None:
            milvus["uri"] = self.milvus_uri
        if self.milvus_token is not None:
            milvus["token"] = self.milvus_token.get_secret_value()
        return {"milvus": milvus}

    @property
    def triton_timeout_s(self) -> float:
        """Deadline of Triton calls that have no caller (readiness, manifest): the caller default's share."""
        return self.default_deadline_s * self.triton_deadline_fraction

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def handler_threads(self) -> int:
        return self.max_inflight + self.spare_threads


class _UnknownPrefixedVariables(PydanticBaseSettingsSource):
    """LENSCOPE_* variables naming no setting, handed to validation as extra keys so that
    ``extra="forbid"`` refuses them by name (pydantic-settings itself ignores unknown variables)."""

    def get_field_value(self, field, field_name):  # noqa: ANN001, ANN201 - not used: __call__ does it all
        return None, field_name, False

    def __call__(self) -> dict[str, str]:
        known = {ENV_PREFIX + name.upper() for name in self.settings_cls.model_fields}
        return {name[len(ENV_PREFIX):].lower(): value for name, value in os.environ.items()
                if name.upper().startswith(ENV_PREFIX) and name.upper() not in known | FOREIGN_VARIABLES}


class _StrictServiceSettings(ServiceSettings):
    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,  # noqa: ANN001, ANN206
                                   file_secret_settings):
        return init_settings, env_settings, _UnknownPrefixedVariables(settings_cls)
