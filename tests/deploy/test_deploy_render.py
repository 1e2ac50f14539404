"""Every kustomization renders, and every rendered object validates against its schema (offline).

Built-in kinds: kubernetes-validate, strict (unknown fields are errors), at the pinned Kubernetes
version. Prometheus Operator kinds (PodMonitor, ServiceMonitor, PrometheusRule): kubernetes-validate
has no CRD schemas, so they are checked against the structural schemas in deploy_crd_schemas.py.
Any other kind fails: nothing is skipped.
"""

from __future__ import annotations

import copy
from collections import Counter

import jsonschema
import kubernetes_validate
import pytest

import deploy_crd_schemas
from deploy_facts import KUBERNETES_VERSION, KUSTOMIZATIONS, OVERLAYS

NAMESPACE = "lenscope"
CLUSTER_SCOPED = {"Namespace"}

# What every overlay must deploy: (kind, name).
EXPECTED = {
    ("Namespace", "lenscope"),
    ("ServiceAccount", "triton"),
    ("ServiceAccount", "lenscope-search"),
    ("Deployment", "triton"),
    ("Deployment", "lenscope-search"),
    ("Service", "triton"),
    ("Service", "triton-headless"),
    ("Service", "lenscope-search"),
    ("ConfigMap", "lenscope-search"),
    ("HorizontalPodAutoscaler", "triton"),
    ("HorizontalPodAutoscaler", "lenscope-search"),
    ("PodDisruptionBudget", "triton"),
    ("PodDisruptionBudget", "lenscope-search"),
    ("NetworkPolicy", "default-deny-all"),
    ("NetworkPolicy", "allow-dns-egress"),
    ("NetworkPolicy", "triton"),
    ("NetworkPolicy", "lenscope-search"),
    ("PodMonitor", "triton"),
    ("ServiceMonitor", "lenscope-search"),
    ("PrometheusRule", "lenscope"),
}


def _id(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renders_into_one_namespace(rendered, name):
    objects = rendered[name]
    assert objects, f"k8s/{name} rendered nothing"
    duplicates = [k for k, n in Counter((o["kind"], o["metadata"]["name"]) for o in objects).items() if n > 1]
    assert not duplicates, duplicates
    for obj in objects:
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], _id(obj)
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{_id(obj)} is not in namespace {NAMESPACE}"
        assert obj["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "lenscope", _id(obj)


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_deploys_every_part(overlays, name):
    have = {(o["kind"], o["metadata"]["name"]) for o in overlays[name]}
    assert EXPECTED <= have, f"missing from {name}: {sorted(EXPECTED - have)}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_object_validates(rendered, name):
    errors = []
    for obj in rendered[name]:
        if obj["kind"] in deploy_crd_schemas.SCHEMAS:
            try:
                deploy_crd_schemas.validate(obj)
            except jsonschema.ValidationError as err:
                errors.append(f"{_id(obj)}: {'.'.join(map(str, err.absolute_path))}: {err.message}")
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{_id(obj)}: {'.'.join(map(str, err.path))}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{_id(obj)}: no schema for {obj['apiVersion']} {obj['kind']} at {KUBERNETES_VERSION}")
    assert not errors, "\n".join(errors)


def _find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def test_strict_validation_catches_unknown_fields(overlays):
    """The validators would notice a typo: an unknown field fails in both paths."""
    deployment = copy.deepcopy(_find(overlays["overlays/gpu"], "Deployment", "triton"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)

    monitor = copy.deepcopy(_find(overlays["overlays/gpu"], "PodMonitor", "triton"))
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        deploy_crd_schemas.validate(monitor)

    rule = copy.deepcopy(_find(overlays["overlays/gpu"], "PrometheusRule", "lenscope"))
    rule["spec"]["groups"][0]["rules"][0]["alert"] = "AlsoAnAlert"  # record and alert together
    with pytest.raises(jsonschema.ValidationError):
        deploy_crd_schemas.validate(rule)
