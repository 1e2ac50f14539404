"""No shell-outs with user input: every process launch, shell, dynamic-code or unsafe-deserialisation
call site in the shipped packages (client/ = lenscope.client, export/ = lenscope.export, including the
generated Triton python models under export/backends/) is found by parsing the source, and each must
be on the allowlist below with the reason it is safe. A new call site fails the test until someone
reviews it and adds it here.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("client", "export")

_SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"}
_OS_CALLS = {"system", "popen", "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
             "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn",
             "posix_spawnp", "startfile"}
_UNSAFE_MODULES = {"pickle", "cPickle", "dill", "shelve", "marshal", "pty", "commands"}

# (file, enclosing function, call) -> why it is safe. Keep the reason specific: what runs, with which
# arguments, and why no request data (query images/text, catalog fields) can reach them.
ALLOWLIST: dict[tuple[str, str, str], str] = {
    ("client/triton/server.py", "TritonServer.start", "subprocess.Popen"): (
        "launches the tritonserver binary located inside the installed nvidia-pytriton wheel, with an argv LIST "
        "(no shell) built by TritonServerConfig.arguments() from validated, operator-set configuration (ports, "
        "paths, flags from `lenscope serve triton` options); search requests never reach it"),
    ("export/model.py", "*", "torch.load"): (
        "loads a model checkpoint named in the operator's model spec, with weights_only=True (no pickled code "
        "objects), at export time only"),
    ("export/training/start.py", "_build", "torch.load"): (
        "reads the model spec's checkpoint to fine-tune from it with fresh heads, with weights_only=True (no "
        "pickled code objects), at training time only"),
    ("export/plan_check.py", "gpu_from_nvidia_smi", "subprocess.run"): (
        "runs the nvidia-smi binary found by shutil.which with a fixed argv LIST (no shell, no user data: "
        "--query-gpu=name,compute_cap) and a 20 s timeout, to record which GPU a TensorRT plan was built for; "
        "operator-run `lenscope model build-trt` / `model check-plans` only, never a search request"),
}


@dataclass(frozen=True)
class Site:
    file: str
    function: str
    call: str
    line: int
    detail: str = ""

    def key(self) -> tuple[str, str, str]:
        return self.file, self.function, self.call


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


class _Scanner(ast.NodeVisitor):
    def __init__(self, file: str):
        self.file = file
        self.scope: list[str] = []
        self.sites: list[Site] = []
        self.aliases: dict[str, str] = {}  # local name -> module.attr it was imported as

    def _add(self, node: ast.AST, call: str, detail: str = "") -> None:
        self.sites.append(Site(self.file, ".".join(self.scope) or "<module>", call, node.lineno, detail))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            if root in _UNSAFE_MODULES:
                self._add(node, f"import {alias.name}")
            self.aliases[alias.asname or root] = alias.name if alias.asname else root
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        for alias in node.names:
            if module.split(".")[0] in _UNSAFE_MODULES:
                self._add(node, f"from {module} import {alias.name}")
            if module in ("subprocess", "os") and alias.name in _SUBPROCESS_CALLS | _OS_CALLS:
                self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        full = f"{self.aliases.get(head, head)}.{rest}" if rest else self.aliases.get(head, head)
        module, _, attr = full.rpartition(".")
        if module == "subprocess" and attr in _SUBPROCESS_CALLS or module == "os" and attr in _OS_CALLS:
            self._add(node, full)
        elif full in ("eval", "exec", "compile", "__import__") and isinstance(node.func, ast.Name):
            self._add(node, full)
        elif full in ("asyncio.create_subprocess_shell", "asyncio.create_subprocess_exec"):
            self._add(node, full)
        elif attr == "load" and module.endswith("torch"):
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            self._add(node, "torch.load", "" if safe else "without weights_only=True")
        elif attr in ("load", "loads") and module.endswith(("numpy", "np")):
            if any(k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in node.keywords):
                self._add(node, f"{full}(allow_pickle=...)")
        elif attr in ("load", "load_all") and module.endswith("yaml"):
            if not any(k.arg == "Loader" and "Safe" in _dotted(k.value) for k in node.keywords):
                self._add(node, f"{full} (not safe_load)")
        for kw in node.keywords:  # shell=True anywhere, whatever the callee
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                self._add(node, "shell=True", f"in a call to {name or '?'}")
        self.generic_visit(node)


def scan() -> list[Site]:
    sites = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            scanner = _Scanner(rel)
            scanner.visit(ast.parse(path.read_text(), filename=rel))
            sites += scanner.sites
    return sites


def _allowed(site: Site) -> str | None:
    return ALLOWLIST.get(site.key()) or ALLOWLIST.get((site.file, "*", site.call))


def test_scanner_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The scanner itself: each pattern in a throwaway module is reported."""
    src = (
        "import subprocess, os, pickle\nfrom subprocess import check_output as co\nimport yaml, torch\n"
        "def f(x):\n    subprocess.run(x, shell=True)\n    os.system(x)\n    co(['ls'])\n    eval(x)\n"
        "    yaml.load(x)\n    torch.load(x)\n    torch.load(x, weights_only=True)\n"
    )
    scanner = _Scanner("probe.py")
    scanner.visit(ast.parse(src))
    found = {(s.call, s.detail) for s in scanner.sites}
    assert {("subprocess.run", ""), ("shell=True", "in a call to subprocess.run"), ("os.system", ""),
            ("subprocess.check_output", ""), ("eval", ""), ("import pickle", ""), ("yaml.load (not safe_load)", ""),
            ("torch.load", "without weights_only=True"), ("torch.load", "")} <= found, found


def test_no_unreviewed_shell_outs_or_unsafe_loads() -> None:
    sites = scan()
    unsafe_details = [s for s in sites if s.detail and s.call != "shell=True"]
    assert not unsafe_details, "unsafe call forms:\n" + "\n".join(
        f"  {s.file}:{s.line} {s.function}: {s.call} {s.detail}" for s in unsafe_details)
    shell = [s for s in sites if s.call == "shell=True"]
    assert not shell, "shell=True is never allowed:\n" + "\n".join(f"  {s.file}:{s.line} {s.detail}" for s in shell)
    unreviewed = [s for s in sites if _allowed(s) is None]
    assert not unreviewed, "call sites not on the allowlist (review them, then add them with a reason):\n" + "\n".join(
        f"  {s.file}:{s.line} {s.function}: {s.call}" for s in unreviewed)
    print(f"\n{len(sites)} process/deserialisation call sites in {', '.join(PACKAGES)}, all reviewed:")
    for s in sites:
        print(f"  {s.file}:{s.line} {s.function}: {s.call}")


def test_allowlist_has_no_stale_entries() -> None:
    keys = {s.key() for s in scan()} | {(s.file, "*", s.call) for s in scan()}
    stale = [k for k in ALLOWLIST if k not in keys]
    assert not stale, f"allowlisted call sites that no longer exist (remove them): {stale}"
