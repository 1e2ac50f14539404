"""Dependency audit of requirements.lock: pip-audit in a venv of its own, plus a fallback for what it
cannot reach, and the triage list from docs/dependency-audit.md.

pip-audit's dependencies must not mix with the main lock, so it is installed ``--no-deps`` from
``pip-audit.lock`` beside this file into ``<lenscope cache>/pip-audit/<lock hash>/`` on first use
(~15 s, from PyPI) and reused after that. ``LENSCOPE_PIP_AUDIT=/path/to/pip-audit`` uses an existing
binary instead. Prebuild it with ``python tests/security/audit_tools.py pip-audit-env``.

Why a fallback: pip-audit's PyPI service asks ``/pypi/<name>/<version>/json`` for each pin. Some
networks reach PyPI only through a caching proxy that serves the simple index and the project-level
``/pypi/<name>/json`` but answers 404 for version-level documents (measured on this project's
machines: every pin came back "Dependency not found on PyPI", and pip-audit still printed "No known
vulnerabilities found" and exited 0). For each pin pip-audit skipped that way, the project-level
document is read instead: its ``vulnerabilities`` list describes the project's *latest* release, so
it is an exact audit of a pin that is the latest release, and no audit at all of an older pin. Such
pins are reported as coverage gaps, never as clean.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: also when run as a script
from pinned_venv import pinned_tool  # noqa: E402
from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parents[2]
MAIN_LOCK = REPO / "requirements.lock"
TRIAGE_DOC = REPO / "docs" / "dependency-audit.md"
PIP_AUDIT_LOCK = Path(__file__).with_name("pip-audit.lock")
PIP_AUDIT_ENV = "LENSCOPE_PIP_AUDIT"
PYPI_JSON_ENV = "LENSCOPE_PYPI_JSON_URL"  # a mirror of https://pypi.org/pypi (project-level JSON API)
_NOT_FOUND = "Dependency not found on PyPI"
_ADVISORY_ID = re.compile(r"^(PYSEC|GHSA|CVE|OSV|BIT|RUSTSEC|MAL)-[A-Za-z0-9-]+$")


class AuditError(RuntimeError):
    """The audit could not run or could not reach any vulnerability data."""


# --------------------------------------------------------------------------------------------------
# The pip-audit venv
# --------------------------------------------------------------------------------------------------


def pip_audit() -> Path:
    """Path to a pip-audit binary, building its pinned venv on first use."""
    return pinned_tool("pip-audit", PIP_AUDIT_LOCK, PIP_AUDIT_ENV, AuditError)


# --------------------------------------------------------------------------------------------------
# Inputs: pins and the triage list
# --------------------------------------------------------------------------------------------------


def read_pins(lock: Path = MAIN_LOCK) -> dict[str, str]:
    """canonical name -> pinned version, from `name==version` lines."""
    pins = {}
    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(3)
    return pins


@dataclass(frozen=True)
class Triage:
    advisory: str
    package: str
    reason: str


def read_triage(doc: Path = TRIAGE_DOC) -> list[Triage]:
    """Rows of the table under '## Ignored findings': | advisory id | package | reason |."""
    rows, in_section = [], False
    for line in doc.read_text().splitlines():
        if line.startswith("## "):
            in_section = line.strip().lower() == "## ignored findings"
            continue
        if not in_section or not line.lstrip().startswith("|"):
            continue
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and _ADVISORY_ID.match(cells[0]):
            rows.append(Triage(cells[0], canonicalize_name(cells[1]), cells[2]))
    return rows


# --------------------------------------------------------------------------------------------------
# Running the audit
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    advisory: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]
    source: str  # "pip-audit" or "pypi-project-json"

    def __str__(self) -> str:
        also = f" (aka {', '.join(self.aliases)})" if self.aliases else ""
        fix = f"; fixed in {', '.join(self.fix_versions)}" if self.fix_versions else "; no fix released"
        return f"{self.package}=={self.version}: {self.advisory}{also}{fix} [{self.source}]"


@dataclass
class AuditResult:
    pins: dict[str, str]
    by_pip_audit: list[str] = field(default_factory=list)
    by_fallback: list[str] = field(default_factory=list)
    gaps: dict[str, str] = field(default_factory=dict)  # package -> why it could not be audited
    findings: list[Finding] = field(default_factory=list)
    ignored: list[Finding] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # package -> network error
    seconds: float = 0.0

    @property
    def audited(self) -> int:
        return len(self.by_pip_audit) + len(self.by_fallback)


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _project_json(name: str, timeout_s: float = 30.0, attempts: int = 3) -> dict:
    base = os.environ.get(PYPI_JSON_ENV, "https://pypi.org/pypi").rstrip("/")
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(f"{base}/{name}/json", timeout=timeout_s) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == attempts:  # 404 is an answer; 5xx and timeouts are retried
                raise
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            if attempt == attempts:
                raise
        time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def _fallback(name: str, version: str, ignore: set[str], result: AuditResult) -> None:
    try:
        doc = _project_json(name)
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as err:
        result.unreachable[name] = f"{type(err).__name__}: {err}"
        return
    latest = doc.get("info", {}).get("version", "")
    if not _same_version(version, latest):
        result.gaps[name] = (f"pinned {version}, latest is {latest}: the project-level JSON only describes the "
                             "latest release and the version-level endpoint is not reachable")
        return
    result.by_fallback.append(name)
    for vuln in doc.get("vulnerabilities") or []:
        if vuln.get("withdrawn"):
            continue
        finding = Finding(name, version, vuln["id"], tuple(vuln.get("aliases") or ()),
                          tuple(vuln.get("fixed_in") or ()), "pypi-project-json")
        ids = {finding.advisory, *finding.aliases}
        (result.ignored if ids & ignore else result.findings).append(finding)


def run_audit(lock: Path = MAIN_LOCK, ignore: set[str] = frozenset(), timeout_s: float = 600.0) -> AuditResult:
    """pip-audit over the lock (PyPI service, --no-deps), then the fallback for what it could not reach."""
    started = time.monotonic()
    result = AuditResult(pins=read_pins(lock))
    cmd = [str(pip_audit()), "--requirement", str(lock), "--no-deps", "--disable-pip", "--vulnerability-service",
           "pypi", "--format", "json", "--progress-spinner", "off", "--timeout", "30"]
    for advisory in sorted(ignore):
        cmd += ["--ignore-vuln", advisory]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    # exit 1 = vulnerabilities found (still a valid report); anything else is a failed run
    if proc.returncode not in (0, 1):
        raise AuditError(f"pip-audit exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    try:
        report = json.loads(proc.stdout)
    except ValueError as err:
        raise AuditError(f"pip-audit printed no JSON report ({err}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    retry: list[str] = []
    for dep in report.get("dependencies", []):
        name = canonicalize_name(dep["name"])
        if "skip_reason" in dep:
            if dep["skip_reason"].startswith(_NOT_FOUND) and name in result.pins:
                retry.append(name)
            else:
                result.gaps[name] = f"pip-audit: {dep['skip_reason']}"
            continue
        result.by_pip_audit.append(name)
        for vuln in dep.get("vulns", []):
            result.findings.append(Finding(name, dep["version"], vuln["id"], tuple(vuln.get("aliases") or ()),
                                           tuple(vuln.get("fix_versions") or ()), "pip-audit"))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: _fallback(n, result.pins[n], set(ignore), result), retry))
    result.seconds = time.monotonic() - started
    return result


if __name__ == "__main__":
    if sys.argv[1:] == ["pip-audit-env"]:
        print(pip_audit())
    elif sys.argv[1:] == ["audit"]:
        res = run_audit(ignore={t.advisory for t in read_triage()})
        print(f"audited {res.audited}/{len(res.pins)} (pip-audit {len(res.by_pip_audit)}, fallback "
              f"{len(res.by_fallback)}) in {res.seconds:.1f} s")
        for f in res.findings:
            print(f"FINDING {f}")
        for f in res.ignored:
            print(f"ignored {f}")
        for name, why in sorted(res.gaps.items()):
            print(f"gap     {name}: {why}")
        for name, why in sorted(res.unreachable.items()):
            print(f"error   {name}: {why}")
    else:
        sys.exit("usage: python tests/security/audit_tools.py pip-audit-env | audit")
