"""Fixtures for the deployment tests: every kustomization rendered once per session."""

from __future__ import annotations

import pytest

from deploy_facts import KUSTOMIZATIONS, OVERLAYS, facts
from deploy_tools import render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """kustomization path (relative to k8s/) -> rendered objects."""
    return {name: render(name) for name in KUSTOMIZATIONS}


@pytest.fixture(scope="session")
def overlays(rendered) -> dict[str, list[dict]]:
    return {name: rendered[name] for name in OVERLAYS}


@pytest.fixture(scope="session")
def known():
    return facts()
