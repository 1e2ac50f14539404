"""Dependency audit of requirements.lock against PyPI's vulnerability data (pip-audit + fallback).

Fails on any finding not triaged in docs/dependency-audit.md, and when no vulnerability data can be
reached at all (a network problem must never read as "no known vulnerabilities"). Pins whose data
this network cannot reach are reported as coverage gaps; with LENSCOPE_AUDIT_STRICT=1 they fail
the test too (use it where PyPI's version-level JSON API is reachable). See audit_tools.py.
"""

from __future__ import annotations

import os
import warnings

import pytest
from audit_tools import MAIN_LOCK, TRIAGE_DOC, read_pins, read_triage, run_audit

STRICT_ENV = "LENSCOPE_AUDIT_STRICT"


def _say(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Figures for the run's log: shown even without -s."""
    with capsys.disabled():
        print(text)


def test_triage_list_is_well_formed() -> None:
    triage = read_triage()
    ids = [t.advisory for t in triage]
    assert len(ids) == len(set(ids)), f"duplicate advisories in {TRIAGE_DOC.name}: {ids}"
    pins = read_pins()
    for t in triage:
        assert len(t.reason) >= 20, f"{t.advisory}: give a real reason for ignoring it, not {t.reason!r}"
        assert t.package in pins, f"{t.advisory} triages {t.package}, which {MAIN_LOCK.name} no longer pins"


def test_dependencies_have_no_untriaged_vulnerabilities(capsys) -> None:
    ignore = {t.advisory for t in read_triage()}
    result = run_audit(ignore=ignore)
    summary = (f"audited {result.audited}/{len(result.pins)} pins of {MAIN_LOCK.name} in {result.seconds:.1f} s "
               f"(pip-audit {len(result.by_pip_audit)}, PyPI project JSON {len(result.by_fallback)}); "
               f"{len(result.findings)} untriaged, {len(result.ignored)} triaged findings; "
               f"{len(result.gaps)} not auditable from here")
    _say(capsys, f"\n{summary}" + "".join(f"\n  gap: {name}: {why}" for name, why in sorted(result.gaps.items())))

    if result.audited == 0 or result.unreachable:
        pytest.fail(
            "the dependency audit could not reach its vulnerability data (PyPI JSON API): "
            f"{len(result.unreachable)} lookups failed, e.g. "
            f"{next(iter(result.unreachable.items()), ('-', 'nothing audited'))}. Check network access to PyPI "
            "(or set LENSCOPE_PYPI_JSON_URL to a mirror); an unreachable audit is a failure, never a pass."
        )
    assert not result.findings, (
        f"untriaged vulnerabilities: upgrade the pin, or add each advisory with a reason to the 'Ignored findings' "
        f"table of docs/{TRIAGE_DOC.name}:\n" + "\n".join(f"  {f}" for f in result.findings)
    )
    if result.gaps:
        message = f"{len(result.gaps)} pins could not be audited from this network: {', '.join(sorted(result.gaps))}"
        if os.environ.get(STRICT_ENV) == "1":
            pytest.fail(message)
        warnings.warn(message, stacklevel=1)
