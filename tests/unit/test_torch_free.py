"""The serving side must start without torch: import every client module with torch made
unimportable, and run the CLI's help, in a fresh interpreter."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import lenscope.client

# Modules that legitimately need more than the serving install (none today); keep this list honest.
NEEDS_TORCH: set[str] = set()

BLOCK_TORCH = (
    "import sys\n"
    "for name in ('torch', 'open_clip', 'torchvision'):\n"
    "    sys.modules[name] = None  # any import of them now raises ImportError\n"
)


def client_modules() -> list[str]:
    mods = []
    for info in pkgutil.walk_packages(lenscope.client.__path__, "lenscope.client."):
        if info.name not in NEEDS_TORCH and not info.name.endswith("__main__"):
            mods.append(info.name)
    return mods


def test_every_client_module_imports_without_torch() -> None:
    mods = client_modules()
    assert "lenscope.client.search.engine" in mods and "lenscope.client.service.server" in mods
    code = BLOCK_TORCH + "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods)
    code += "assert not any(sys.modules.get(n) for n in ('torch', 'open_clip')), 'torch was imported'\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_cli_help_runs_without_torch() -> None:
    code = BLOCK_TORCH + (
        "from typer.testing import CliRunner\n"
        "from lenscope.client.cli.app import app\n"
        "for args in (['--help'], ['serve', '--help'], ['search', '--help'], ['index', 'build', '--help']):\n"
        "    r = CliRunner().invoke(app, args)\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
