"""The manifests agree with what Triton and the search service really expose (deploy_facts.py).

Ports, probes, flags, settings, metric names in the HPAs, the prometheus-adapter rules and the alert
rules, drain timing, security context, network reachability, monitoring selectors.
"""

from __future__ import annotations

import re

import grpc
import pytest
import yaml

from deploy_facts import OVERLAYS, TABLE, facts
from deploy_tools import K8S

ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------


def find(objects, kind, name):
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def pod_spec(objects, name):
    return find(objects, "Deployment", name)["spec"]["template"]["spec"]


def container(objects, deployment, name):
    return next(c for c in pod_spec(objects, deployment)["containers"] if c["name"] == name)


def all_containers(spec):
    return [*spec.get("initContainers", []), *spec["containers"]]


def flag_value(args, flag):
    values = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} given {len(values)} times in {args}"
    return values[0]


def quantity(value) -> float:
    """Kubernetes quantity -> float (the suffixes used here)."""
    text = str(value)
    for suffix, factor in (("m", 1e-3), ("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def search_env(objects) -> dict[str, str]:
    """LENSCOPE_* variables the search container gets (ConfigMap via envFrom, then env)."""
    c = container(objects, "lenscope-search", "search")
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in c.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


PROMQL_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*[{\[]")


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression. Every selector in these files is written name{...} (or
    name[...]), so a name directly followed by a brace or bracket is a metric; functions take '('."""
    return set(PROMQL_SELECTOR.findall(expr))


def go_template_to_python(replacement: str) -> str:
    return re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", replacement)


def adapter_rules() -> list[dict]:
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


def adapter_output_name(rule: dict) -> str:
    """The custom-metric name prometheus-adapter serves for a rule, as it computes it: the series
    name from seriesQuery, rewritten by name.matches -> name.as."""
    (series,) = promql_metrics(rule["seriesQuery"])
    name = rule.get("name", {})
    pattern = name.get("matches", "^(.*)$")
    match = re.search(pattern, series)
    assert match, f"name.matches {pattern!r} does not match the series {series!r}"
    default = "$1" if re.compile(pattern).groups else "$0"
    return match.expand(go_template_to_python(name.get("as", default))) if "$" in name.get("as", default) else name["as"]


# ---------------------------------------------------------------------------------------------------
# facts: the table and the code agree
# ---------------------------------------------------------------------------------------------------


def test_table_agrees_with_python(known):
    """Where the code states a fact, the fallback table must say the same (so neither drifts)."""
    print("fact sources:", known.sources)
    for key in ("http_port", "grpc_port", "metrics_port", "models", "ensembles"):
        assert known.triton[key] == TABLE["triton"][key], key
    for key in ("grpc_port", "metrics_port", "health_service", "env_prefix", "metrics", "index_root_option",
                "triton_url_envvar"):
        assert known.search[key] == TABLE["search"][key], key


# ---------------------------------------------------------------------------------------------------
# Triton
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_ports_probes_and_flags(overlays, overlay, known):
    t = known.triton
    c = container(overlays[overlay], "triton", "triton")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": t["http_port"], "grpc": t["grpc_port"], "metrics": t["metrics_port"]}

    def probe_target(probe):
        get = c[probe]["httpGet"]
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        return get["path"], port

    assert probe_target("startupProbe") == (t["ready_path"], t["http_port"])
    assert probe_target("readinessProbe") == (t["ready_path"], t["http_port"])
    assert probe_target("livenessProbe") == (t["live_path"], t["http_port"])

    assert c["command"] == ["tritonserver"]
    for arg in t["required_args"]:
        assert arg in c["args"], arg
    assert int(flag_value(c["args"], "--http-port")) == t["http_port"]
    assert int(flag_value(c["args"], "--grpc-port")) == t["grpc_port"]
    assert int(flag_value(c["args"], "--metrics-port")) == t["metrics_port"]
    assert flag_value(c["args"], "--allow-metrics") == "true"
    # The repository the flag names is what the pod provides (a mount, or baked into the image).
    assert flag_value(c["args"], "--model-repository") == "/models"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_admin_apis_are_locked_with_a_key_from_a_secret(overlays, overlay):
    """Like `lenscope serve triton`: model load/unload, logging, trace and shared memory answer only
    requests with the admin header, over gRPC and HTTP; the key is a Secret's, never in the manifest."""
    from lenscope.client.triton.server import ADMIN_APIS, ADMIN_HEADER

    c = container(overlays[overlay], "triton", "triton")
    env = {e["name"]: e for e in c.get("env", [])}
    for flag in ("--grpc-restricted-protocol", "--http-restricted-api"):
        apis, _, rest = flag_value(c["args"], flag).partition(":")
        header, _, value = rest.partition("=")
        assert set(apis.split(",")) == set(ADMIN_APIS) and header == ADMIN_HEADER, flag
        var = re.fullmatch(r"\$\((\w+)\)", value)
        assert var, f"{flag}: the key must be a $(VAR) reference, not a literal"
        ref = env[var.group(1)]["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"] and not ref.get("optional"), "a missing Secret must stop the pod"
    assert not [o for o in overlays[overlay] if o["kind"] == "Secret"], "no Secret is committed"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_drains_before_it_is_killed(overlays, overlay):
    """preStop sleep (endpoint removal propagates) + --exit-timeout-secs (in-flight requests finish)
    must fit inside terminationGracePeriodSeconds, with margin for the process to exit."""
    spec = pod_spec(overlays[overlay], "triton")
    c = container(overlays[overlay], "triton", "triton")
    exit_timeout = int(flag_value(c["args"], "--exit-timeout-secs"))
    assert exit_timeout >= 5, "below ~5 s Triton's shutdown turns clean exits into failures (tritonserver.py)"
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + exit_timeout + 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_shared_memory(overlays, overlay):
    spec = pod_spec(overlays[overlay], "triton")
    c = container(overlays[overlay], "triton", "triton")
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    # memory-backed: it counts toward the container's memory limit, so it must leave room
    assert quantity(volume["emptyDir"]["sizeLimit"]) <= quantity(c["resources"]["limits"]["memory"]) / 2


def test_gpu_overlay_schedules_on_gpus(overlays):
    spec = pod_spec(overlays["overlays/gpu"], "triton")
    c = container(overlays["overlays/gpu"], "triton", "triton")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_gpu_triton_has_a_writable_trt_cache_where_the_configs_point(overlays):
    """The gpu configs keep TensorRT engine/timing caches under RepositorySettings.trt_cache_dir; the
    root filesystem is read-only and /models is mounted read-only, so the overlay must mount that path."""
    from lenscope.export.repository import RepositorySettings

    cache_dir = RepositorySettings(profile="gpu").trt_cache_dir
    gpu = overlays["overlays/gpu"]
    c = container(gpu, "triton", "triton")
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == cache_dir]
    assert not mount.get("readOnly")
    (volume,) = [v for v in pod_spec(gpu, "triton")["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume


def test_trt_plans_are_built_in_the_pod_after_the_fetch_by_the_serving_image(overlays):
    """gpu-trt-plans: after the repository is fetched, `lenscope model build-plans` runs in the Triton
    image (its trtexec and TensorRT are the ones that will load the plans) on the pod's GPU, writes the
    plans into /models and keeps them under the trt-cache volume, with a command the CLI really has."""
    from typer.main import get_command

    from lenscope.client.cli.app import app

    objects = overlays["overlays/gpu-trt-plans"]
    spec = pod_spec(objects, "triton")
    triton = container(objects, "triton", "triton")
    assert [c["name"] for c in spec["initContainers"]] == ["fetch-model-repository", "build-trt-plans"]
    build = spec["initContainers"][1]
    assert build["image"] == triton["image"]
    assert build["resources"]["limits"]["nvidia.com/gpu"] == triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert build["command"][0].endswith("/lenscope") and build["args"][:3] == ["model", "build-plans", "/models"]
    model_cmd = get_command(app).commands["model"]
    assert "build-plans" in model_cmd.commands
    options = {o for p in model_cmd.commands["build-plans"].params for o in p.opts}
    assert {a.split("=")[0] for a in build["args"][3:]} <= options
    mounts = {m["mountPath"]: m for m in build["volumeMounts"]}
    assert not mounts["/models"].get("readOnly")
    cache = flag_value(build["args"], "--cache")
    assert any(cache.startswith(path + "/") for path in mounts if path != "/models"), cache
    assert mounts["/models"]["name"] == next(m["name"] for m in triton["volumeMounts"] if m["mountPath"] == "/models")


def test_cpu_demo_asks_for_no_gpu(overlays):
    c = container(overlays["overlays/cpu-demo"], "triton", "triton")
    assert not any("nvidia.com/gpu" in str(k) for k in c["resources"].get("limits", {}))
    assert flag_value(c["args"], "--allow-gpu-metrics") == "false"


def test_model_repository_fetched_or_baked(overlays):
    """gpu: an init container fills the /models emptyDir through the artifact mirror, the only pod
    that reads object storage. cpu-demo: baked into the image, so nothing may be mounted over /models
    and no mirror runs."""
    gpu = overlays["overlays/gpu"]
    spec = pod_spec(gpu, "triton")
    (fetch,) = spec["initContainers"]
    assert fetch["args"][0] == "copy" and fetch["args"][-1] == "/models"
    assert fetch["args"][-2] == "$(MODEL_REPOSITORY_SOURCE)"
    artifacts = find(gpu, "ConfigMap", "lenscope-artifacts")["data"]
    assert artifacts["MODEL_REPOSITORY_SOURCE"].startswith("mirror:")  # the rclone remote configured beside it
    assert artifacts["INDEX_SOURCE"].startswith("mirror:")
    assert artifacts["RCLONE_CONFIG_MIRROR_TYPE"] == "http"
    mirror_port = find(gpu, "Service", "lenscope-artifacts")["spec"]["ports"][0]["port"]
    assert artifacts["RCLONE_CONFIG_MIRROR_URL"] == f"http://lenscope-artifacts:{mirror_port}/"
    mirror = container(gpu, "lenscope-artifacts", "mirror")
    assert mirror["args"][:3] == ["serve", "http", "--read-only"] and mirror["args"][-1] == "$(ARTIFACTS_ROOT)"
    assert flag_value(mirror["args"], "--addr") == f":{mirror_port}"
    assert artifacts["ARTIFACTS_ROOT"].startswith("artifacts:") and artifacts["RCLONE_CONFIG_ARTIFACTS_TYPE"]
    fetch_volume = next(m["name"] for m in fetch["volumeMounts"] if m["mountPath"] == "/models")
    served = next(m for m in container(gpu, "triton", "triton")["volumeMounts"] if m["mountPath"] == "/models")
    assert served["name"] == fetch_volume and served["readOnly"] is True

    demo = overlays["overlays/cpu-demo"]
    assert not pod_spec(demo, "triton").get("initContainers")
    assert all(m["mountPath"] != "/models" for m in container(demo, "triton", "triton")["volumeMounts"])
    assert not pod_spec(demo, "lenscope-search").get("initContainers")
    assert not [o for o in demo if o["metadata"]["name"] == "lenscope-artifacts"]


def test_only_the_artifact_mirror_holds_storage_credentials(overlays):
    """The serving pods mount no storage secret and name no credentials file: the mirror does."""
    for objects in overlays.values():
        for name in ("triton", "lenscope-search"):
            spec = pod_spec(objects, name)
            assert not [v for v in spec["volumes"] if "secret" in v], name
            assert "CREDENTIALS" not in str([c.get("env") for c in all_containers(spec)]), name
    mirror = pod_spec(overlays["overlays/gpu"], "lenscope-artifacts")
    assert [v["secret"]["secretName"] for v in mirror["volumes"] if "secret" in v] == ["lenscope-artifacts-credentials"]
    assert mirror["serviceAccountName"] == "lenscope-artifacts"


# ---------------------------------------------------------------------------------------------------
# search service
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_search_ports_and_probes(overlays, overlay, known):
    s = known.search
    c = container(overlays[overlay], "lenscope-search", "search")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": s["grpc_port"], "metrics": s["metrics_port"]}
    # plain HTTP on the metrics port (client/service/observability.py READY_PATH): works with gRPC TLS on
    from lenscope.client.service.observability import READY_PATH

    assert "grpc" not in c["readinessProbe"]
    assert c["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "metrics"}
    # Startup and liveness must not follow Triton's health (see the comment in the manifest).
    for probe in ("startupProbe", "livenessProbe"):
        assert ports[c[probe]["tcpSocket"]["port"]] == s["grpc_port"], probe
    index_root = f"{s['index_root_option']}=/index"
    assert c["args"] == [*s["cli"], index_root]
    # /index holds the bundle: the fetch-index emptyDir, or baked into the image (cpu-demo)
    spec = pod_spec(overlays[overlay], "lenscope-search")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    fetched = any(i["args"][-1] == "/index" for i in spec.get("initContainers", []))
    assert ("/index" in mounts) == fetched


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_search_settings(overlays, overlay, known):
    """The environment the pod gets is what the service reads: every LENSCOPE_* variable is a
    ServiceSettings field (validated by ServiceSettings itself) or a documented engine setting."""
    s = known.search
    env = search_env(overlays[overlay])
    assert int(env["LENSCOPE_GRPC_PORT"]) == s["grpc_port"]
    assert int(env["LENSCOPE_METRICS_PORT"]) == s["metrics_port"]
    assert env["LENSCOPE_HOST"] == "0.0.0.0"  # the service defaults to 127.0.0.1
    assert env[s["triton_url_envvar"]] == s["triton_url"]
    prefix = s["env_prefix"]
    assert all(k.startswith(prefix) for k in env if k not in ("HOME",)), env

    settings_class = s.get("settings_class")
    plain = {k: v for k, v in env.items() if isinstance(v, str) and k.startswith(prefix)}
    if settings_class is not None:
        fields = set(settings_class.model_fields)
        unknown = {k for k in plain if k.removeprefix(prefix).lower() not in fields}
        assert unknown <= set(s["env_outside_service_settings"]), f"not read by the service: {unknown}"
        kwargs = {k.removeprefix(prefix).lower(): v for k, v in plain.items() if k not in unknown}
        settings = settings_class(**kwargs)  # raises, naming the field, on a bad value
        assert settings.grpc_port == s["grpc_port"] and settings.metrics_port == s["metrics_port"]


def test_triton_url_names_the_headless_triton_service(overlays, known):
    """The search service dials every Triton pod (client-side round-robin over the headless Service's
    addresses), not the ClusterIP that pins each connection to one pod."""
    for objects in overlays.values():
        url = search_env(objects)["LENSCOPE_TRITON_URL"]
        assert url.startswith("dns:///"), url
        host, port = url.removeprefix("dns:///").rsplit(":", 1)
        service = find(objects, "Service", host)
        assert service["spec"]["clusterIP"] == "None"
        grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["port"] == int(port) == known.triton["grpc_port"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_search_drains_before_it_is_killed(overlays, overlay):
    spec = pod_spec(overlays[overlay], "lenscope-search")
    c = container(overlays[overlay], "lenscope-search", "search")
    grace = float(search_env(overlays[overlay])["LENSCOPE_SHUTDOWN_GRACE_S"])
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] >= int(command[1]) + grace + 5


def test_milvus_mode_in_gpu_overlay(overlays):
    gpu = overlays["overlays/gpu"]
    env = search_env(gpu)
    assert env["LENSCOPE_VECTOR_BACKEND"] == "milvus"
    assert env["LENSCOPE_MILVUS_URI"].startswith("http://") and env["LENSCOPE_MILVUS_URI"].endswith(":19530")
    token = env["LENSCOPE_MILVUS_TOKEN"]
    assert token == {"secretKeyRef": {"name": "lenscope-milvus", "key": "token"}}, "the token must come from a Secret"
    assert not [o for o in gpu if o["kind"] == "Secret"], "no Secret is committed"
    assert "LENSCOPE_VECTOR_BACKEND" not in search_env(overlays["overlays/cpu-demo"])
    # every one of them is a setting the service reads (an unknown LENSCOPE_* variable is refused)
    from lenscope.client.service.settings import ServiceSettings

    for name in ("LENSCOPE_VECTOR_BACKEND", "LENSCOPE_MILVUS_URI", "LENSCOPE_MILVUS_TOKEN"):
        assert name.removeprefix("LENSCOPE_").lower() in ServiceSettings.model_fields, name


# ---------------------------------------------------------------------------------------------------
# Services and monitoring
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services(overlays, overlay, known):
    objects = overlays[overlay]
    triton = {p["name"]: (p["port"], p["appProtocol"]) for p in find(objects, "Service", "triton")["spec"]["ports"]}
    assert triton == {
        "http": (known.triton["http_port"], "http"),
        "grpc": (known.triton["grpc_port"], "grpc"),
        "metrics": (known.triton["metrics_port"], "http"),
    }
    headless = find(objects, "Service", "triton-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert [(p["port"], p["appProtocol"]) for p in headless["ports"]] == [(known.triton["grpc_port"], "grpc")]
    search = {p["name"]: (p["port"], p["appProtocol"]) for p in find(objects, "Service", "lenscope-search")["spec"]["ports"]}
    assert search == {"grpc": (known.search["grpc_port"], "grpc"), "metrics": (known.search["metrics_port"], "http")}
    for service in ("triton", "triton-headless", "lenscope-search"):
        selector = find(objects, "Service", service)["spec"]["selector"]
        deployment = "lenscope-search" if service == "lenscope-search" else "triton"
        labels = find(objects, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), service


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scrape_targets(overlays, overlay, known):
    objects = overlays[overlay]
    pm = find(objects, "PodMonitor", "triton")["spec"]
    labels = find(objects, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    assert pm["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = pm["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in container(objects, "triton", "triton")["ports"]}
    assert ports[endpoint["port"]] == known.triton["metrics_port"]
    assert endpoint["path"] == known.triton["metrics_path"]

    sm = find(objects, "ServiceMonitor", "lenscope-search")["spec"]
    service = find(objects, "Service", "lenscope-search")
    assert sm["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = sm["endpoints"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports[endpoint["port"]] == known.search["metrics_port"]
    assert endpoint["path"] == known.search["metrics_path"]


# ---------------------------------------------------------------------------------------------------
# autoscaling: HPA <-> prometheus-adapter <-> the metrics the servers export
# ---------------------------------------------------------------------------------------------------


def test_adapter_rules_query_real_metrics(known):
    exported = known.triton_metric_names() | known.search_metric_names()
    for rule in adapter_rules():
        used = promql_metrics(rule["seriesQuery"]) | promql_metrics(rule["metricsQuery"])
        assert used and used <= exported, f"{adapter_output_name(rule)}: unknown metrics {used - exported}"
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        overrides = rule["resources"]["overrides"]
        assert overrides == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}


def test_adapter_skips_exactly_the_ensembles(known):
    """The queue/compute ratio counts the composing models (ensembles: the entry models would count
    their steps twice) or, where those sit idle, the cpu profile's fused entry models: both
    selections must name the entry models the exporter writes, no more and no fewer."""
    for rule in adapter_rules():
        for excluded in re.findall(r'model[!=]~"([^"]*)"', rule["metricsQuery"]):
            assert sorted(excluded.split("|")) == sorted(known.triton["ensembles"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_metrics_are_served_by_the_adapter(overlays, overlay):
    served = {adapter_output_name(rule) for rule in adapter_rules()}
    for hpa in (o for o in overlays[overlay] if o["kind"] == "HorizontalPodAutoscaler"):
        spec = hpa["spec"]
        find(overlays[overlay], spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"])
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        for metric in spec["metrics"]:
            if metric["type"] == "Pods":
                name = metric["pods"]["metric"]["name"]
                assert name in served, f"HPA {hpa['metadata']['name']} scales on {name}, which no adapter rule serves"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_scales_on_queueing(overlays, overlay):
    (metric,) = find(overlays[overlay], "HorizontalPodAutoscaler", "triton")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "triton_queue_to_compute_ratio"
    rule = next(r for r in adapter_rules() if adapter_output_name(r) == "triton_queue_to_compute_ratio")
    used = promql_metrics(rule["metricsQuery"])
    assert used == {"nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"}
    assert 0 < quantity(metric["pods"]["target"]["averageValue"]) < 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_search_scales_on_cpu_and_inflight(overlays, overlay, known):
    hpa = find(overlays[overlay], "HorizontalPodAutoscaler", "lenscope-search")["spec"]
    by_type = {m["type"]: m for m in hpa["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    pods = by_type["Pods"]["pods"]
    assert pods["metric"]["name"] == "lenscope_search_inflight_requests"
    assert pods["metric"]["name"] in known.search["metrics"]
    # pods are added before they shed: the target sits below the admission limit
    max_inflight = int(search_env(overlays[overlay])["LENSCOPE_MAX_INFLIGHT"])
    assert 0 < quantity(pods["target"]["averageValue"]) < max_inflight
    container_cpu = container(overlays[overlay], "lenscope-search", "search")["resources"]["requests"]["cpu"]
    assert quantity(container_cpu) > 0  # Utilization targets need a CPU request


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_cover_the_deployments(overlays, overlay):
    objects = overlays[overlay]
    for name in ("triton", "lenscope-search"):
        pdb = find(objects, "PodDisruptionBudget", name)["spec"]
        labels = find(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert pdb["selector"]["matchLabels"].items() <= labels.items()
        assert pdb.get("maxUnavailable") == 1  # a single replica can still be drained


# ---------------------------------------------------------------------------------------------------
# alerts
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_alert_rules_use_real_metrics(overlays, overlay, known):
    groups = find(overlays[overlay], "PrometheusRule", "lenscope")["spec"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    exported = known.triton_metric_names() | known.search_metric_names()
    for rule in rules:
        used = promql_metrics(rule["expr"])
        assert used, rule
        assert used <= exported | recorded, f"{rule.get('alert') or rule.get('record')}: unknown {used - exported - recorded}"
        for excluded in re.findall(r'model[!=]~"([^"]*)"', rule["expr"]):
            assert sorted(excluded.split("|")) == sorted(known.triton["ensembles"])
        for codes in re.findall(r'code=~?"([^"]*)"|code!~"([^"]*)"', rule["expr"]):
            for code in "|".join(codes).split("|"):
                assert not code or code in grpc.StatusCode.__members__, f"{code} is not a gRPC status code name"

    alerts = {r["alert"]: r for r in rules if "alert" in r}
    by_record = {r["record"]: r["expr"] for r in rules if "record" in r}

    def expand(expr):  # inline recording rules (recursively), to see which raw metrics an alert rests on
        for _ in range(len(by_record) + 1):
            for name, body in by_record.items():
                expr = expr.replace(name, f"({body})")
        return expr

    latency = [a for a in alerts.values() if "histogram_quantile(0.99" in expand(a["expr"])]
    assert latency and all("lenscope_search_stage_seconds_bucket" in expand(a["expr"]) for a in latency)
    errors = [a for a in alerts.values() if "lenscope_search_requests_total" in expand(a["expr"])]
    assert any(a["labels"]["severity"] == "critical" for a in errors)
    assert any("nv_inference_request_failure" in a["expr"] for a in alerts.values())
    for alert in alerts.values():
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


# ---------------------------------------------------------------------------------------------------
# security context and resources
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", ["triton", "lenscope-search", "lenscope-artifacts"])
def test_hardened_pods(overlays, overlay, deployment):
    if deployment == "lenscope-artifacts" and overlay != "overlays/gpu":
        return  # baked artifacts: no mirror (test_model_repository_fetched_or_baked)
    spec = pod_spec(overlays[overlay], deployment)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] >= 10000
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == deployment
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in all_containers(spec):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)
        # a read-only root needs a writable /tmp
        tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in volumes[tmp["name"]], c["name"]
        for mount in c["volumeMounts"]:
            assert mount["name"] in volumes, (c["name"], mount)
    mounted = {m["name"] for c in all_containers(spec) for m in c["volumeMounts"]}
    assert mounted == set(volumes), f"unused volumes: {set(volumes) - mounted}"


def test_namespace_enforces_restricted_pod_security(overlays):
    for objects in overlays.values():
        labels = find(objects, "Namespace", "lenscope")["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# ---------------------------------------------------------------------------------------------------
# network policy: who may reach what
# ---------------------------------------------------------------------------------------------------

NAMESPACE = "lenscope"
SEARCH_POD = {"app.kubernetes.io/name": "lenscope-search"}
TRITON_POD = {"app.kubernetes.io/name": "triton"}
PROMETHEUS = ("monitoring", {"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/name": "prometheus"})
FRONTEND = ("shop", {"kubernetes.io/metadata.name": "shop", "lenscope.io/role": "frontend"}, {"app": "web"})
STRANGER = ("other", {"kubernetes.io/metadata.name": "other"}, {"app": "web"})
NEIGHBOUR = (NAMESPACE, {"kubernetes.io/metadata.name": NAMESPACE}, {"app": "debug"})
SEARCH = (NAMESPACE, {"kubernetes.io/metadata.name": NAMESPACE}, SEARCH_POD)
TRITON = (NAMESPACE, {"kubernetes.io/metadata.name": NAMESPACE}, TRITON_POD)
MIRROR = (NAMESPACE, {"kubernetes.io/metadata.name": NAMESPACE}, {"app.kubernetes.io/name": "lenscope-artifacts"})
INTERNET = ("", {}, {})  # an address outside the cluster: matched only by ipBlock peers


def _selects(selector: dict, labels: dict) -> bool:
    assert not selector.get("matchExpressions"), "this evaluator handles matchLabels only"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _peer_matches(peer: dict, policy_ns: str, pod) -> bool:
    namespace, ns_labels, pod_labels = pod
    if "ipBlock" in peer:
        return True  # pod IPs lie inside 0.0.0.0/0; such rules must then be port-restricted
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], ns_labels):
            return False
    elif namespace != policy_ns:
        return False
    return _selects(peer.get("podSelector", {}), pod_labels)


def _admits(policies, direction: str, subject, peer, port: int) -> bool:
    """Whether the policies selecting `subject` let traffic in `direction` pass to/from `peer`."""
    namespace, _, labels = subject
    selecting = [
        p for p in policies
        if p["metadata"]["namespace"] == namespace and _selects(p["spec"]["podSelector"], labels)
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True  # not isolated
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            ports = rule.get("ports")
            if peers is not None and not any(_peer_matches(p, namespace, peer) for p in peers):
                continue
            if ports is not None and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
                continue
            return True
    return False


def reachable(policies, source, destination, port: int) -> bool:
    return _admits(policies, "Egress", source, destination, port) and _admits(
        policies, "Ingress", destination, source, port
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_reachability(overlays, overlay, known):
    policies = [o for o in overlays[overlay] if o["kind"] == "NetworkPolicy"]
    deny = find(overlays[overlay], "NetworkPolicy", "default-deny-all")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    t_grpc, t_http, t_metrics = (known.triton[k] for k in ("grpc_port", "http_port", "metrics_port"))
    s_grpc, s_metrics = known.search["grpc_port"], known.search["metrics_port"]

    allowed = [
        (SEARCH, TRITON, t_grpc),
        (FRONTEND, SEARCH, s_grpc),
        (PROMETHEUS, TRITON, t_metrics),
        (PROMETHEUS, SEARCH, s_metrics),
    ]
    denied = [
        (NEIGHBOUR, TRITON, t_grpc),  # only the search pods reach Triton's gRPC
        (FRONTEND, TRITON, t_grpc),
        (STRANGER, TRITON, t_grpc),
        (SEARCH, TRITON, t_http),  # HTTP carries health only (the kubelet's probes)
        (STRANGER, SEARCH, s_grpc),  # only frontend namespaces reach the search API
        (NEIGHBOUR, SEARCH, s_grpc),
        (FRONTEND, SEARCH, s_metrics),
        (PROMETHEUS, TRITON, t_grpc),
        (TRITON, SEARCH, s_grpc),
    ]
    mirrored = any(o["kind"] == "Deployment" and o["metadata"]["name"] == "lenscope-artifacts" for o in overlays[overlay])
    if mirrored:  # the init containers copy through the mirror; nobody else reaches it
        allowed += [(TRITON, MIRROR, 8080), (SEARCH, MIRROR, 8080)]
        denied += [(NEIGHBOUR, MIRROR, 8080), (STRANGER, MIRROR, 8080), (FRONTEND, MIRROR, 8080)]
    # Egress to the internet: only the mirror, only HTTPS. A NetworkPolicy selects pods, not
    # containers, so anything open for an init container would be open for the server beside it.
    for subject in (TRITON, SEARCH, NEIGHBOUR):
        for port in (443, 80):
            assert not _admits(policies, "Egress", subject, INTERNET, port), (subject, port)
    assert _admits(policies, "Egress", MIRROR, INTERNET, 443) == mirrored
    assert not _admits(policies, "Egress", MIRROR, INTERNET, 80)
    for source, destination, port in allowed:
        assert reachable(policies, source, destination, port), (source, destination, port)
    for source, destination, port in denied:
        assert not reachable(policies, source, destination, port), (source, destination, port)
