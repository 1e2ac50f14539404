"""Policy and lint checks: checkov on the rendered manifests and the Dockerfiles, hadolint, yamllint.

Zero failed checks. A skip is allowed only inline (``checkov.io/skipN`` annotation in a manifest,
``# hadolint ignore=`` in a Dockerfile) and must say why.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from deploy_facts import OVERLAYS
from deploy_tools import DOCKER, K8S, REPO, checkov, venv_tool

DOCKERFILES = sorted(DOCKER.glob("*/Dockerfile"))
MIN_REASON = 30  # characters: a reason, not a placeholder


def test_dockerfiles_exist():
    assert {p.parent.name for p in DOCKERFILES} == {"triton", "search"}


@pytest.fixture(scope="module")
def checkov_reports(overlays, tmp_path_factory):
    # One directory for both frameworks: checkov prints one JSON document per -d argument.
    scan = tmp_path_factory.mktemp("checkov-scan")
    (scan / "k8s").mkdir()
    for name, objects in overlays.items():
        (scan / "k8s" / f"{name.replace('/', '-')}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    for dockerfile in DOCKERFILES:
        target = scan / "docker" / dockerfile.parent.name / "Dockerfile"
        target.parent.mkdir(parents=True)
        target.write_text(dockerfile.read_text())
    proc = subprocess.run(
        [str(checkov()), "--directory", str(scan), "--framework", "kubernetes", "dockerfile",
         "--skip-download", "--compact", "--output", "json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode in (0, 1), f"checkov crashed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    return {report["check_type"]: report for report in reports}


def test_checkov_no_failed_checks(checkov_reports):
    assert set(checkov_reports) == {"kubernetes", "dockerfile"}, list(checkov_reports)
    failures = []
    for check_type, report in checkov_reports.items():
        assert report["summary"]["passed"] > 0, f"checkov ran no {check_type} checks"
        for failed in report["results"]["failed_checks"]:
            failures.append(f"{check_type} {failed['check_id']} {failed['check_name']}: {failed['resource']}")
    assert not failures, "\n".join(failures)


def test_checkov_saw_every_workload(checkov_reports, overlays):
    """Guard against a scan that silently parsed nothing: each Deployment was checked."""
    checked = {c["resource"] for c in checkov_reports["kubernetes"]["results"]["passed_checks"]}
    for objects in overlays.values():
        for obj in objects:
            if obj["kind"] == "Deployment":
                assert f"Deployment.lenscope.{obj['metadata']['name']}" in checked
    dockerfiles = {c["file_path"] for c in checkov_reports["dockerfile"]["results"]["passed_checks"]}
    assert {f"/docker/{p.parent.name}/Dockerfile" for p in DOCKERFILES} <= dockerfiles, dockerfiles


def test_checkov_skips_are_justified(checkov_reports):
    skipped = [s for r in checkov_reports.values() for s in r["results"]["skipped_checks"]]
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.strip()) >= MIN_REASON, f"{check['check_id']} on {check['resource']} skipped without a reason"
    # Print what was skipped and why (visible with -rA / -s).
    for check in sorted(skipped, key=lambda c: (c["check_id"], c["resource"])):
        print(f"skipped {check['check_id']} on {check['resource']}: {check['check_result']['suppress_comment']}")


def _skip_annotations(objects):
    for obj in objects:
        for key, value in (obj["metadata"].get("annotations") or {}).items():
            if "checkov.io/skip" in key:
                yield obj, key, value


@pytest.mark.parametrize("name", OVERLAYS)
def test_skip_annotations_are_well_formed(overlays, name):
    """checkov splits the value on '=': exactly one, an ID before it and a reason after it."""
    for obj, key, value in _skip_annotations(overlays[name]):
        check_id, sep, reason = value.partition("=")
        assert sep and "=" not in reason, f"{obj['kind']}/{obj['metadata']['name']} {key}: {value!r}"
        assert re.fullmatch(r"CKV2?_K8S_\d+", check_id), check_id
        assert len(reason.strip()) >= MIN_REASON, f"{check_id}: reason too short"


def test_hadolint():
    config = DOCKER / ".hadolint.yaml"
    proc = subprocess.run(
        [str(venv_tool("hadolint")), "--config", str(config), *map(str, DOCKERFILES)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_ignores_are_justified():
    """Every `# hadolint ignore=` line is preceded by a comment that explains it."""
    for dockerfile in DOCKERFILES:
        lines = dockerfile.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("# hadolint ignore="):
                assert i > 0 and lines[i - 1].startswith("#") and len(lines[i - 1]) > MIN_REASON, (
                    f"{dockerfile.relative_to(REPO)}:{i + 1}: ignore without a reason on the line above"
                )


def test_yamllint():
    proc = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "--config-file", str(K8S / ".yamllint.yaml"), str(K8S)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
