"""The CLI's hostile tier: every case of tests/corpus/cli_cases.py, run in-process with typer's CliRunner.

Each case must end with its exit code (2 = the input cannot be used), one message naming what was
wrong, no traceback, no raw control character on the terminal, and every file of the user's
workspace byte-for-byte unchanged (nothing overwritten, nothing deleted).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
from cli_cases import ESC, CliCase, build_cases, make_workspace  # noqa: E402

from lenscope.client.cli.app import app  # noqa: E402

CASES = build_cases()


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root (links not followed, FIFOs not opened) -> a digest of what it is/holds."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                state[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                state[rel] = "dir"
            elif p.is_file():
                state[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                state[rel] = "special"
    return state


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("hostile") / "ws")


@pytest.fixture
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_cli_case(case: CliCase, workspace: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace)
    for var in [v for v in os.environ if v.startswith("LENSCOPE_")]:
        monkeypatch.delenv(var)
    before = snapshot(workspace)
    result = CliRunner().invoke(app, case.argv(taken_port), env=case.env)
    out = result.output
    assert result.exit_code == case.code, f"{case.id}: exit {result.exit_code}\n{out}\n{result.exception!r}"
    assert "Traceback" not in out, out
    assert "a bug in lenscope" not in out, out
    assert ESC not in out and "\x07" not in out, f"raw control character reached the terminal: {out!r}"
    lowered = " ".join(out.lower().replace("│", " ").split())  # messages in click's panel wrap at 80 columns
    assert any(e.lower() in lowered for e in case.expect), f"{case.id}: none of {case.expect} in\n{out}"
    after = snapshot(workspace)
    changed = {k for k in before if after.get(k) != before[k]}
    assert not changed, f"{case.id} changed or removed user files: {sorted(changed)}"
    for extra in set(after) - set(before):  # what a refused command may leave: nothing but our scratch folders
        assert extra.split(os.sep)[0] in (".lenscope",), f"{case.id} created {extra}"


def _commands(group, prefix: tuple[str, ...] = ()):
    subs = getattr(group, "commands", None)
    if not subs:
        yield " ".join(prefix)
        return
    for name, sub in subs.items():
        yield from _commands(sub, (*prefix, name))


def test_every_command_has_hostile_cases() -> None:
    """Every command the CLI registers, read from the app itself: a new command needs its cases."""
    import typer

    from lenscope.client.cli.app import app

    commands = set(_commands(typer.main.get_command(app)))
    assert len(commands) >= 12
    assert commands <= {c.command for c in CASES}, f"no hostile cases for {sorted(commands - {c.command for c in CASES})}"


@pytest.mark.parametrize("argv, fragment", [
    (["serve", "search", "--index-root", "empty_root"], "empty_root holds no published index"),
    (["serve", "search", "--index-root", "root_file_current"], "current is not a symlink"),
    (["index", "build", "--catalog", "catalog.jsonl", "--index-root", "userdata"], "userdata is a folder lenscope did not"),
])
def test_the_real_process_prints_one_message(argv: list[str], fragment: str, workspace: Path) -> None:
    """The same boundary outside CliRunner: a real process, real stderr, no Rich traceback."""
    import subprocess

    before = snapshot(workspace)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENSCOPE_")}
    proc = subprocess.run([sys.executable, "-m", "lenscope.client.cli", *argv], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and fragment in " ".join(proc.stderr.split()), proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2  # the message and its hint
    assert snapshot(workspace) == before
