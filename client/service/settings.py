"""Settings of the gRPC search service (``lenscope serve search``), from ``LENSCOPE_*`` variables.

Validated when constructed, before any port is bound: a bad limit or a missing certificate fails at
startup naming the field, not on the first request. Each limit exists for latency discipline:
``max_inflight`` bounds concurrent engine work (excess is shed with RESOURCE_EXHAUSTED rather than
queued), ``default_deadline_s`` applies when a caller sends no deadline, and the engine (hence
Triton) gets only ``triton_deadline_fraction`` of the caller's remaining time, keeping the rest for
fusing, facets and the reply.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, FilePath, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lenscope.client.search.models import SearchQuery

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

    model_config = SettingsConfigDict(env_prefix="LENSCOPE_", extra="ignore", frozen=True)

    host: str = Field(
        "127.0.0.1", min_length=1, description="listen address for gRPC and metrics; 0.0.0.0 in a container"
    )
    grpc_port: int = Field(50051, ge=0, le=65535, description="0 = any free port (tests)")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics; 0 = any free port")

    max_inflight: int = Field(
        8, ge=1, description="searches running in the engine at once; more are shed. Sizes every pool of a "
        "request (service/servicer.py). 8 on 2 cores: side by side at 2.4x saturation it served 2x the "
        "searches of 32, which let requests share the CPU until they missed their deadline "
        "(benchmarks/reports/load.md); raise it with the cores"
    )
    spare_threads: int = Field(
        8, ge=1, description="gRPC handler threads beyond max_inflight: they answer shed, invalid and health calls"
    )
    max_queued_rpcs: int = Field(
        0, ge=0, description="RPCs waiting for a handler thread before gRPC itself answers RESOURCE_EXHAUSTED; "
        "0 (measured best): gRPC rejects the excess on its polling thread before any work"
    )

    default_deadline_s: float = Field(1.0, gt=0, description="deadline for callers that send none")
    triton_deadline_fraction: float = Field(
        0.8, gt=0, lt=1, description="share of the caller's remaining time passed to the engine / Triton"
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

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def handler_threads(self) -> int:
        return self.max_inflight + self.spare_threads
