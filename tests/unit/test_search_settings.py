"""One settings object for `lenscope serve search`: unknown LENSCOPE_* variables are refused by name,
the deadline fraction is applied once, every setting is documented in docs/search-settings.md, and the
Triton address forms (one address, a comma list, dns:///) map onto gRPC targets."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lenscope.client.cli.app import app
from lenscope.client.service.settings import ENV_PREFIX, FOREIGN_VARIABLES, ServiceSettings
from lenscope.client.triton.client import grpc_target

ROOT = Path(__file__).resolve().parents[2]


def _serve(tmp_path: Path, env: dict[str, str], *args: str):
    return CliRunner().invoke(app, ["serve", "search", "--index-root", str(tmp_path), *args], env=env)


def test_a_misspelt_variable_is_refused_naming_it_and_the_right_one(tmp_path: Path) -> None:
    result = _serve(tmp_path, {"LENSCOPE_TRITON_URLL": "10.0.0.1:8001"})
    assert result.exit_code == 2
    out = result.output
    assert "LENSCOPE_TRITON_URLL is not a setting" in out and "did you mean LENSCOPE_TRITON_URL?" in out


def test_a_bad_value_names_the_variable_but_never_prints_the_token(tmp_path: Path) -> None:
    result = _serve(tmp_path, {"LENSCOPE_RERANK_DEPTH": "0", "LENSCOPE_MILVUS_TOKEN": "root:s3cret",
                               "LENSCOPE_VECTOR_BACKEND": "qdrant"})
    assert result.exit_code == 2
    assert "LENSCOPE_RERANK_DEPTH='0'" in result.output and "LENSCOPE_VECTOR_BACKEND='qdrant'" in result.output
    assert "s3cret" not in result.output


def test_known_and_foreign_variables_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENSCOPE_TRITON_URL", "dns:///triton-headless:8001")
    monkeypatch.setenv("LENSCOPE_MILVUS_TOKEN", "root:Milvus")
    monkeypatch.setenv("LENSCOPE_TRITON_ADMIN_KEY", "k")  # read by `serve triton`, not a typo
    s = ServiceSettings.from_environment(rerank_depth=50)  # a flag wins over the variable
    assert s.triton_url == "dns:///triton-headless:8001" and s.rerank_depth == 50
    assert s.index_options() == {"milvus": {"token": "root:Milvus"}}
    monkeypatch.setenv("LENSCOPE_RERANK_DEPHT", "7")
    with pytest.raises(ValueError, match="rerank_depht"):
        ServiceSettings.from_environment()


def test_the_deadline_fraction_is_one_number_and_derives_the_triton_timeout() -> None:
    s = ServiceSettings(default_deadline_s=0.5, triton_deadline_fraction=0.6)
    engine = s.search_settings()
    assert engine.triton_share == 0.6 and engine.default_deadline_s == 0.5
    assert s.triton_timeout_s == pytest.approx(0.3)


def test_every_setting_is_documented_in_one_place() -> None:
    doc = (ROOT / "docs" / "search-settings.md").read_text()
    missing = [ENV_PREFIX + f.upper() for f in ServiceSettings.model_fields if ENV_PREFIX + f.upper() not in doc]
    assert not missing, f"docs/search-settings.md does not list {missing}"


def test_every_lenscope_variable_the_repository_names_is_a_setting_or_foreign() -> None:
    files = subprocess.run(["git", "ls-files", "client", "export", "k8s", "docker", "tests", "benchmarks", "docs",
                            "Makefile", "README.md"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    names = set()
    for rel in files:
        path = ROOT / rel
        if path.is_file() and path.suffix in {".py", ".yaml", ".yml", ".md", ".sh", ""} and "test_search_settings" not in rel and rel != "docs/search-settings.md":
            names |= set(re.findall(r"\bLENSCOPE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")))
    known = {ENV_PREFIX + f.upper() for f in ServiceSettings.model_fields} | FOREIGN_VARIABLES
    unknown = sorted(n for n in names - known if not n.endswith("_"))
    assert not unknown, f"LENSCOPE_ names that `serve search` would refuse: add to FOREIGN_VARIABLES or settings: {unknown}"


@pytest.mark.parametrize(("url", "target"), [
    ("triton:8001", "triton:8001"),
    ("dns:///triton-headless:8001", "dns:///triton-headless:8001"),
    ("127.0.0.1:8001, 127.0.0.1:8101", "ipv4:127.0.0.1:8001,127.0.0.1:8101"),
    ("[::1]:8001,[::1]:8101", "ipv6:[::1]:8001,[::1]:8101"),
])
def test_triton_address_forms(url: str, target: str) -> None:
    assert grpc_target(url) == target


@pytest.mark.parametrize(("url", "message"), [
    ("triton-a:8001,triton-b:8001", "not ip:port"),
    ("127.0.0.1,127.0.0.2:8001", "has no port"),
])
def test_triton_address_lists_of_names_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        grpc_target(url)


def test_the_triton_channel_is_replaced_after_its_maximum_age(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past max_connection_age_s a new channel (a fresh name resolution: new pods join) replaces the
    live one; the replaced one is closed only at the next replacement, so calls on it can finish."""
    from lenscope.client.triton import client as triton_client

    clock = [1000.0]
    monkeypatch.setattr(triton_client.time, "monotonic", lambda: clock[0])
    closed: list[object] = []
    embedder = triton_client.TritonEmbedder(triton_client.ClientConfig(url="127.0.0.1:1,127.0.0.1:2",
                                                                       max_connection_age_s=60))
    try:
        first = embedder._client
        assert embedder._client is first
        for c in (first,):
            monkeypatch.setattr(c, "close", lambda c=c: closed.append(c))
        clock[0] += 61
        second = embedder._client
        assert second is not first and closed == []  # the old one still finishes its calls
        monkeypatch.setattr(second, "close", lambda: closed.append(second))
        clock[0] += 61
        third = embedder._client
        assert third is not second and closed == [first]
    finally:
        embedder.close()


def test_documented_defaults_are_the_defaults() -> None:
    """The table in docs/search-settings.md states each default; a changed default must change it."""
    doc = (ROOT / "docs" / "search-settings.md").read_text()
    rows = dict(re.findall(r"^\| `(LENSCOPE_[A-Z0-9_]+)` \| ([^|]+) \|", doc, flags=re.M))
    wrong = {}
    for name, field in ServiceSettings.model_fields.items():
        default = field.default
        documented = rows.get(ENV_PREFIX + name.upper(), "").strip().strip("`")
        if isinstance(default, bool):
            expected = str(default).lower()
        elif isinstance(default, (int, float, str)):
            expected = str(default)
        else:
            continue  # None / secrets / paths: documented as "-" or in words
        if documented.lower() != expected.lower():
            wrong[ENV_PREFIX + name.upper()] = (documented, expected)
    assert not wrong, f"docs/search-settings.md defaults differ from the code (documented, actual): {wrong}"
