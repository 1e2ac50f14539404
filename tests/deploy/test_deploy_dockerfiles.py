"""Static checks of the Dockerfiles (no docker engine here): they are parsed, and what they state
must agree with the repository (files they copy, the lock's pins, Python version) and with the
Kubernetes manifests (user, ports, command)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field

import pytest

from deploy_facts import OVERLAYS
from deploy_tools import DOCKER, REPO

GIT_IGNORED_OUTPUTS = ("model_repository/", "artifacts/")  # build outputs, present only at build time


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path) -> tuple[dict[str, str], list[Stage]]:
    """Dockerfile -> (global ARGs, stages). Joins continuation lines; drops comments."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            assert m, line
            stages.append(Stage(base=m.group(1), name=m.group(2)))
        elif not stages:
            assert keyword == "ARG", f"{path}: {keyword} before the first FROM"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return global_args, stages


def stage(stages, name) -> Stage:
    return next(s for s in stages if s.name == name)


def arg_default(stage_: Stage, name: str) -> str:
    for args in stage_.all("ARG"):
        key, _, default = args.partition("=")
        if key == name:
            return default.strip('"')
    raise KeyError(name)


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return value


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def final_user(stages) -> int:
    users = [args for s in stages for args in s.all("USER")]
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "numeric USER, so runAsNonRoot can verify it"
    return int(uid)


def copy_sources(stages):
    """(source, stage) for every COPY from the build context (not --from=another stage)."""
    for s in stages:
        for args in s.all("COPY"):
            words = shlex.split(args)
            if any(w.startswith("--from=") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            for source in sources:
                if source.startswith("${"):
                    source = arg_default(s, source[2:-1])
                yield source, s


def dockerignore_admits(ignore_file, path: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes. Directory patterns match below."""
    admitted = True
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path.rstrip("/"), pattern) or path.startswith(pattern + "/") or pattern == "*":
            admitted = negate
    return admitted


TRITON = DOCKER / "triton" / "Dockerfile"
SEARCH = DOCKER / "search" / "Dockerfile"


@pytest.mark.parametrize("dockerfile", [TRITON, SEARCH], ids=["triton", "search"])
def test_copied_files_exist_and_reach_the_build_context(dockerfile):
    _, stages = parse(dockerfile)
    ignore = dockerfile.with_name("Dockerfile.dockerignore")
    assert ignore.exists(), "without it the build context would include the 1.5 GB .venv"
    for source, _ in copy_sources(stages):
        if not source.startswith(GIT_IGNORED_OUTPUTS):
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        assert dockerignore_admits(ignore, source), f"COPY {source} is excluded by {ignore.name}"
    assert not dockerignore_admits(ignore, ".venv"), ".venv must stay out of the build context"


@pytest.mark.parametrize("dockerfile", [TRITON, SEARCH], ids=["triton", "search"])
def test_python_matches_the_package(dockerfile):
    """The wheel is built and run on the Python the package declares (requires-python)."""
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ">=3.11" in requires and "<3.12" in requires
    _, stages = parse(dockerfile)
    assert stage(stages, "wheel").base.startswith("python:3.11-slim")
    text = " ".join(args for s in stages for args in s.all("RUN"))
    assert "torch" not in re.sub(r"find_spec\('torch'\)", "", text), "the serving images never install torch"
    assert "[export]" not in text


def test_triton_image(overlays, known):
    _, stages = parse(TRITON)
    t = known.triton
    runtime = stage(stages, "runtime")
    assert runtime.base == t["image"]
    assert [s.name for s in stages] == ["wheel", "stub", "runtime", "baked"]
    assert stage(stages, "baked").base == "runtime"

    # The python-backend stub comes from the same nvidia-pytriton release the lock pins (its Triton
    # 2.51.0 is the server of NGC 24.10), for the Python the venv is made with.
    assert arg_default(stage(stages, "stub"), "PYTRITON_VERSION") == lock_pins()["nvidia-pytriton"]
    stub_run = " ".join(stage(stages, "stub").all("RUN"))
    assert "python_backend_stubs/3.11/" in stub_run
    runs = " ".join(runtime.all("RUN"))
    assert "python3.11 -m venv /opt/lenscope" in runs
    assert "-c /tmp/requirements.lock" in runs
    for package in ("pillow", "ftfy", "regex", "pydantic", "pyyaml", "onnxruntime", '"numpy<2"'):
        assert f" {package}" in runs, package
    assert "--no-deps /tmp/wheels/lenscope-" in runs
    assert "/opt/lenscope/bin" in " ".join(runtime.all("ENV")).split("PATH=")[1]

    exposed = {int(p) for args in runtime.all("EXPOSE") for p in args.split()}
    assert exposed == {t["http_port"], t["grpc_port"], t["metrics_port"]}
    # `docker run`: the entrypoint locks the admin APIs, then execs tritonserver with CMD's flags
    # (Kubernetes sets `command: tritonserver` and passes the lock itself: test_deploy_contract).
    entrypoint = exec_form(runtime.all("ENTRYPOINT")[-1])
    assert entrypoint == ["/opt/lenscope/bin/lenscope-triton-entrypoint"]
    assert any(c.endswith(f"docker/triton/entrypoint.sh {entrypoint[0]}") for c in runtime.all("COPY"))
    cmd = exec_form(runtime.all("CMD")[-1])
    assert set(t["required_args"]) <= set(cmd)
    healthcheck = runtime.all("HEALTHCHECK")[-1]
    assert f"127.0.0.1:{t['http_port']}{t['ready_path']}" in healthcheck

    for overlay in OVERLAYS:
        deployment = next(o for o in overlays[overlay] if o["kind"] == "Deployment" and o["metadata"]["name"] == "triton")
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == final_user(stages)


def test_search_image(overlays, known):
    s = known.search
    _, stages = parse(SEARCH)
    assert [st.name for st in stages] == ["wheel", "runtime", "baked"]
    runtime = stage(stages, "runtime")
    assert runtime.base.startswith("python:3.11-slim")
    runs = " ".join(runtime.all("RUN"))
    assert "-c /tmp/requirements.lock" in runs and "--only-binary=:all:" in runs
    extras = arg_default(runtime, "EXTRA_PACKAGES").split()
    for package in extras:
        assert re.sub(r"[-_.]+", "-", package).lower() in lock_pins(), f"{package} is not pinned by the lock"
    # both vector backends the service can serve: FAISS bundles and Milvus collections (milvus component)
    assert {"faiss-cpu", "pymilvus"} <= set(extras) and "import lenscope.client, pymilvus" in runs
    exposed = {int(p) for args in runtime.all("EXPOSE") for p in args.split()}
    assert exposed == {s["grpc_port"], s["metrics_port"]}
    entrypoint = exec_form(runtime.all("ENTRYPOINT")[-1])
    cmd = exec_form(runtime.all("CMD")[-1])
    assert entrypoint + cmd == ["lenscope", *s["cli"], f"{s['index_root_option']}=/index"]
    healthcheck = runtime.all("HEALTHCHECK")[-1]
    assert f"127.0.0.1:{s['grpc_port']}" in healthcheck and s["health_service"] in healthcheck
    baked = stage(stages, "baked")
    assert shlex.split(baked.all("COPY")[-1])[-1] == "/index"

    for overlay in OVERLAYS:
        deployment = next(
            o for o in overlays[overlay] if o["kind"] == "Deployment" and o["metadata"]["name"] == "lenscope-search"
        )
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsUser"] == final_user(stages)
        (c,) = spec["containers"]
        assert "command" not in c and c["args"] == cmd  # the image's ENTRYPOINT stays


def test_images_are_tagged(overlays):
    for objects in overlays.values():
        for obj in objects:
            if obj["kind"] != "Deployment":
                continue
            spec = obj["spec"]["template"]["spec"]
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                name, _, tag = c["image"].rpartition(":")
                assert name and "/" not in tag and tag not in ("", "latest"), c["image"]


def _run_entrypoint(tmp_path, env: dict[str, str]):
    """Runs docker/triton/entrypoint.sh with a stand-in `tritonserver` first on PATH that writes its
    argv, one per line (the script's own logic is what is under test, not Triton's)."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "tritonserver"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    base = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["sh", str(DOCKER / "triton" / "entrypoint.sh"), "--model-repository=/models"],
                          env={**base, **env}, capture_output=True, text=True, timeout=30)


def test_triton_entrypoint_locks_admin_apis_by_default(tmp_path):
    from lenscope.client.triton.server import ADMIN_APIS, ADMIN_HEADER

    lock = f"{','.join(ADMIN_APIS)}:{ADMIN_HEADER}="
    given = _run_entrypoint(tmp_path, {"LENSCOPE_TRITON_ADMIN_KEY": "s3cret-key.1"})
    assert given.returncode == 0, given.stderr
    assert given.stdout.splitlines() == ["--model-repository=/models", f"--grpc-restricted-protocol={lock}s3cret-key.1",
                                         f"--http-restricted-api={lock}s3cret-key.1"]
    fresh = [_run_entrypoint(tmp_path, {}) for _ in range(2)]
    keys = set()
    for run in fresh:
        assert run.returncode == 0 and "locked with a random key" in run.stderr
        grpc_flag, http_flag = run.stdout.splitlines()[1:]
        key = grpc_flag.split(lock, 1)[1]
        assert len(key) >= 32 and http_flag == f"--http-restricted-api={lock}{key}"
        keys.add(key)
    assert len(keys) == 2  # a new key per start: nobody holds it
    opened = _run_entrypoint(tmp_path, {"LENSCOPE_TRITON_OPEN_ADMIN": "1"})
    assert opened.stdout.splitlines() == ["--model-repository=/models"] and "OPEN" in opened.stderr


@pytest.mark.parametrize("key, message", [("short", "8-128 characters"), ("has space!", "only letters"),
                                          ("$(reboot)xx", "only letters")])
def test_triton_entrypoint_refuses_a_bad_key(tmp_path, key, message):
    run = _run_entrypoint(tmp_path, {"LENSCOPE_TRITON_ADMIN_KEY": key})
    assert run.returncode == 2 and message in run.stderr and run.stdout == ""
