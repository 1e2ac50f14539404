"""What Triton and the search service really expose: the ONE place the deployment tests read.

Where the Python code defines a fact (Triton's default ports in ``TritonServerConfig``, the model
names in ``contract``, the search service's ports, health service name, settings prefix and metric
names in ``service.settings`` / ``service.servicer`` / ``service.observability``), :func:`facts` takes
it from there, so a change in the code shows up here. The table below is the fallback while a module is missing, and it also holds
what no Python module can state: Triton's own HTTP paths, flags and Prometheus metrics.
``test_deploy_contract.py::test_table_agrees_with_python`` fails when table and code drift apart.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from functools import lru_cache

# Kubernetes version whose schemas every rendered object is validated against (strict). The
# manifests use grpc probes (GA 1.27), autoscaling/v2, policy/v1 and PDB
# unhealthyPodEvictionPolicy (GA 1.31), so 1.31 is the oldest they support.
KUBERNETES_VERSION = "1.31.0"

# Kustomizations `kubectl kustomize` must render (paths relative to k8s/).
OVERLAYS = ("overlays/cpu-demo", "overlays/gpu", "overlays/gpu-trt-plans")
KUSTOMIZATIONS = ("base", *OVERLAYS)

TABLE = {
    "triton": {
        "image": "nvcr.io/nvidia/tritonserver:24.10-py3",
        "http_port": 8000,
        "grpc_port": 8001,
        "metrics_port": 8002,
        "ready_path": "/v2/health/ready",
        "live_path": "/v2/health/live",
        "metrics_path": "/metrics",
        # Flags every deployment must pass (value checked), plus --exit-timeout-secs=N (N checked
        # against the termination grace period).
        "required_args": ("--model-repository=/models", "--strict-readiness=true", "--model-control-mode=none"),
        # Prometheus metrics Triton exports (label `model`, and `version`).
        "metrics": {
            "nv_inference_queue_duration_us": "counter",
            "nv_inference_compute_infer_duration_us": "counter",
            "nv_inference_request_success": "counter",
            "nv_inference_request_failure": "counter",
            "nv_inference_request_duration_us": "counter",
            "nv_inference_count": "counter",
            "nv_inference_pending_request_count": "gauge",
        },
        "models": (
            "image_preprocess", "image_encoder", "attribute_heads", "text_tokenizer", "text_encoder",
            "embed_image", "embed_text",
        ),
        "ensembles": ("embed_image", "embed_text"),
    },
    "search": {
        "grpc_port": 50051,
        "metrics_port": 9464,
        "metrics_path": "/metrics",
        "health_service": "lenscope.v1.SearchService",
        "env_prefix": "LENSCOPE_",
        "metrics": {
            "lenscope_search_stage_seconds": "histogram",
            "lenscope_search_requests_total": "counter",
            "lenscope_search_inflight_requests": "gauge",
            "lenscope_ann_recall_at_k": "gauge",
            "lenscope_index_version_info": "gauge",
            "lenscope_index_switches_total": "counter",
        },
        # Settings the deployment sets that ServiceSettings does not define: none any more (the
        # service refuses unknown LENSCOPE_* variables at start-up).
        "env_outside_service_settings": (),
        # client-side round-robin over the headless Service's addresses (one per ready Triton pod)
        "triton_url": "dns:///triton-headless:8001",
        # `lenscope serve search`: the index location is an option without an environment variable.
        "cli": ("serve", "search"),
        "index_root_option": "--index-root",
        "triton_url_envvar": "LENSCOPE_TRITON_URL",
    },
}


@dataclass(frozen=True)
class Facts:
    triton: dict
    search: dict
    sources: dict  # fact -> "python:<module>" or "table"

    def search_metric_names(self) -> set[str]:
        """Every series name the search service exports (histogram and counter suffixes included)."""
        return _series_names(self.search["metrics"])

    def triton_metric_names(self) -> set[str]:
        return _series_names(self.triton["metrics"])


def _series_names(metrics: dict[str, str]) -> set[str]:
    names: set[str] = set()
    for name, kind in metrics.items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


@lru_cache(maxsize=1)
def facts() -> Facts:
    triton = dict(TABLE["triton"])
    search = dict(TABLE["search"])
    sources: dict[str, str] = {}

    try:
        from lenscope.client.triton.server import TritonServerConfig
    except ImportError:
        sources["triton ports"] = "table"
    else:
        defaults = {f.name: f.default for f in dataclasses.fields(TritonServerConfig)}
        for key in ("http_port", "grpc_port", "metrics_port"):
            triton[key] = defaults[key]
        sources["triton ports"] = "python:lenscope.client.triton.server.TritonServerConfig"

    try:
        from lenscope.client.core import contract
    except ImportError:
        sources["triton models"] = "table"
    else:
        triton["models"] = tuple(contract.ALL_MODELS)
        triton["ensembles"] = tuple(contract.ENSEMBLES)
        sources["triton models"] = "python:lenscope.client.core.contract"

    try:
        from lenscope.client.service.settings import ServiceSettings
    except ImportError:
        sources["search settings"] = "table"
    else:
        fields = ServiceSettings.model_fields
        search["grpc_port"] = fields["grpc_port"].default
        search["metrics_port"] = fields["metrics_port"].default
        search["env_prefix"] = ServiceSettings.model_config["env_prefix"]
        search["settings_class"] = ServiceSettings
        sources["search settings"] = "python:lenscope.client.service.settings.ServiceSettings"

    try:
        from lenscope.client.service.servicer import SERVICE_NAME
    except ImportError:
        sources["search health"] = "table"
    else:
        search["health_service"] = SERVICE_NAME
        sources["search health"] = "python:lenscope.client.service.servicer.SERVICE_NAME"

    try:
        from lenscope.client.service.observability import ServiceMetrics
    except ImportError:
        sources["search metrics"] = "table"
    else:
        search["metrics"] = _metric_kinds(ServiceMetrics)
        sources["search metrics"] = "python:lenscope.client.service.observability.ServiceMetrics"

    try:
        from lenscope.client.cli.serve import search_service
    except ImportError:
        sources["search command line"] = "table"
    else:
        options = {name: p.default for name, p in inspect.signature(search_service).parameters.items()}
        search["index_root_option"] = options["index_root"].param_decls[0]
        # the flag has no envvar of its own: the one settings object reads LENSCOPE_TRITON_URL
        assert "triton_url" in ServiceSettings.model_fields
        search["triton_url_envvar"] = search["env_prefix"] + "TRITON_URL"
        sources["search command line"] = "python:lenscope.client.cli.serve.search_service"

    return Facts(triton=triton, search=search, sources=sources)


def _metric_kinds(metrics_class) -> dict[str, str]:
    """Build the service's metrics with a stand-in backend and read their names and types."""
    registry = metrics_class(backend=object()).registry
    kinds: dict[str, str] = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        kinds[name] = family.type
    return kinds
