"""The arrows between the rooms of `lenscope.client` point one way (docs/architecture.md).

An AST scan, so imports inside functions count too: a lazy import is still a dependency.
- `lenscope.client` never imports torch / open_clip / torchvision, at any depth of any module;
- it imports `lenscope.export` only from the CLI composition root (`client/cli/`), lazily inside a
  command function, for the commands that need torch;
- only `client/triton/client.py` imports tritonclient;
- each room imports only the rooms below it (ALLOWED), so no cycle and no reverse arrow can appear.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "client"

# room -> rooms it may import. A new room, or a new arrow, is a decision: add it here and to docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "api": set(),
    "core": set(),
    "inputs": {"core"},
    "catalog": {"core"},
    "triton": {"core"},
    "vectors": {"core"},
    "ranking": {"core"},
    "synth": {"core", "catalog"},
    "index": {"core", "catalog", "inputs", "ranking", "vectors"},
    "search": {"core", "index", "inputs", "ranking", "triton", "vectors"},
    "service": {"api", "core", "ranking", "search"},
    "web": {"api", "core", "inputs", "search"},
    "eval": {"core", "catalog", "index", "inputs", "ranking", "search", "synth", "triton", "vectors"},
    "cli": {"api", "core", "catalog", "eval", "index", "inputs", "ranking", "search", "service", "synth", "triton",
            "vectors", "web"},
}
TORCH = ("torch", "open_clip", "torchvision")


def _modules() -> list[Path]:
    """Every hand-written module (the generated protobuf code is left out)."""
    return sorted(p for p in CLIENT.rglob("*.py") if not p.name.endswith(("_pb2.py", "_pb2_grpc.py")))


def _room(path: Path) -> str:
    parts = path.relative_to(CLIENT).parts
    return parts[0] if len(parts) > 1 else "(top)"


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import statement in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative imports would hide the room they reach into
                    out.append((f"<relative level {child.level}> {child.module}", child.lineno, in_function))
                elif child.module:
                    out.append((child.module, child.lineno, in_function))
                    out.extend((f"{child.module}.{a.name}", child.lineno, in_function) for a in child.names)
            visit(child, nested)

    visit(tree, False)
    return out


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(CLIENT.parent)}:{line}"


def test_every_room_is_declared() -> None:
    rooms = {_room(p) for p in _modules()} - {"(top)"}
    assert rooms <= set(ALLOWED), f"undeclared rooms {sorted(rooms - set(ALLOWED))}: add them to ALLOWED and the docs"
    assert [p.name for p in CLIENT.glob("*.py")] == ["__init__.py"], "client/ holds rooms, not loose modules"


def test_no_torch_anywhere_in_client() -> None:
    bad = [f"{_where(p, line)} imports {mod}" for p in _modules() for mod, line, _ in _imports(p)
           if mod.split(".")[0] in TORCH]
    assert not bad, "lenscope.client must run without torch:\n" + "\n".join(bad)


def test_client_reaches_export_only_lazily_from_the_cli() -> None:
    bad = [f"{_where(p, line)} imports {mod}" + ("" if lazy else " at module level")
           for p in _modules() for mod, line, lazy in _imports(p)
           if mod.startswith("lenscope.export") and not (_room(p) == "cli" and lazy)]
    assert not bad, "only client/cli/ may import lenscope.export, inside a command function:\n" + "\n".join(bad)


def test_only_the_triton_client_module_imports_tritonclient() -> None:
    owner = CLIENT / "triton" / "client.py"
    bad = [f"{_where(p, line)} imports {mod}" for p in _modules() for mod, line, _ in _imports(p)
           if mod.split(".")[0] == "tritonclient" and p != owner]
    assert not bad, "tritonclient belongs to client/triton/client.py:\n" + "\n".join(bad)


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_room_imports_point_one_way(room: str) -> None:
    bad = []
    for p in _modules():
        if _room(p) != room:
            continue
        for mod, line, _ in _imports(p):
            if mod.startswith("<relative"):
                bad.append(f"{_where(p, line)}: {mod} (use absolute imports)")
            elif mod.startswith("lenscope.client."):
                target = mod.split(".")[2]
                if target != room and target not in ALLOWED[room]:
                    bad.append(f"{_where(p, line)} imports {mod} ({room} -> {target} is not an allowed arrow)")
    assert not bad, "\n".join(bad)


def test_the_scan_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The oracle itself: a lazy torch import and a relative import are both found."""
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef g():\n    import torch\n    from .x import y\n")
    found = {(mod, lazy) for mod, _, lazy in _imports(f)}
    assert ("torch", True) in found and ("os", False) in found
    assert any(mod.startswith("<relative level 1>") for mod, _ in found)
