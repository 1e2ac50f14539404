"""What every benchmark report carries: the machine it ran on, latency percentiles, and the three files
(JSON for machines, Markdown for people, a PNG plot) written side by side under ``.lenscope/bench/reports/``
(git-ignored), or with ``--publish`` under the tracked ``benchmarks/reports/``.

Numbers from a shared 2-core box drift by tens of percent between minutes, so the reports put compared
configurations next to each other from the SAME run and state ratios; absolute figures only make sense
with the ``machine`` block beside them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The tracked reports the README quotes: rewritten only with --publish, so a trial run changes no
# tracked file.
PUBLISHED = Path(__file__).resolve().parent / "reports"
# Scratch space (exported models, catalogs, indexes): git-ignored; LENSCOPE_BENCH_WORK moves it (tests).
WORK = Path(os.environ.get("LENSCOPE_BENCH_WORK") or REPO / ".lenscope" / "bench")
REPORTS = WORK / "reports"  # where a run writes its report by default (git-ignored)


def add_output_options(parser: Any, flag: str = "--out") -> None:
    """``--out DIR`` and ``--publish``: reports go to the git-ignored REPORTS unless published."""
    parser.add_argument(flag, type=Path, default=None,
                        help=f"report directory (default: {REPORTS.relative_to(REPO) if REPORTS.is_relative_to(REPO) else REPORTS}; "
                             "with --publish: benchmarks/reports, the tracked reports the README quotes)")
    parser.add_argument("--publish", action="store_true",
                        help="write the tracked reports in benchmarks/reports/ (what the README quotes)")


def output_dir(value: Path | None, publish: bool) -> Path:
    if value is not None and publish:
        raise SystemExit("--publish writes benchmarks/reports/: give either it or an output directory")
    return value if value is not None else (PUBLISHED if publish else REPORTS)


# ------------------------------------------------------------------------------------------------
# Machine
# ------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _versions(dists: Iterable[str]) -> dict[str, str]:
    found = {}
    for dist in dists:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    """Where a number came from: CPU, cores usable by this process, memory, GPUs, load, versions."""
    return {
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "gpus": _gpus(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": _versions(("lenscope", "numpy", "onnxruntime", "faiss-cpu", "grpcio", "nvidia-pytriton",
                               "tritonclient", "pymilvus", "milvus-lite")),
        "git_commit": _git_commit(),
    }


def machine_line(machine: dict[str, Any]) -> str:
    gpu = ", ".join(machine.get("gpus") or []) or "no GPU"
    load = machine.get("load_average_at_start") or []
    return (f"{machine.get('cpu')} ({machine.get('cpus_usable')} usable cores), {machine.get('memory_gib')} GiB, {gpu}; "
            f"load average at start {' / '.join(str(x) for x in load)}; commit {machine.get('git_commit')}")


# ------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------


def percentiles(values_ms: Sequence[float], qs: Sequence[int] = (50, 90, 95, 99)) -> dict[str, float | None]:
    """{"p50": .., "p90": .., ...} in the unit given (ms by convention); None for an empty sample."""
    if len(values_ms) == 0:
        return {f"p{q}": None for q in qs}
    arr = np.asarray(values_ms, dtype=np.float64)
    return {f"p{q}": round(float(np.percentile(arr, q)), 3) for q in qs}


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    if a is None or b is None or b == 0 or any(map(math.isnan, (a, b))):
        return None
    return round(a / b, digits)


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: numbers rounded, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 2) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


class Report:
    """Collects a benchmark's JSON payload and Markdown body; ``write()`` puts both plus the plot on disk."""

    def __init__(self, name: str, out_dir: Path, argv: Sequence[str] | None = None) -> None:
        self.name = name
        self.out_dir = Path(out_dir)
        self.started = time.monotonic()
        self.data: dict[str, Any] = {
            "benchmark": name,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", f"benchmarks/{name}.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine_info(),
        }
        self.markdown: list[str] = []

    @classmethod
    def reopen(cls, data: dict[str, Any], out_dir: Path) -> "Report":
        """A report around an earlier run's JSON, to re-render its Markdown and plot (the numbers, the
        machine and the timings stay those of the run)."""
        report = cls.__new__(cls)
        report.name, report.out_dir, report.data, report.markdown = data["benchmark"], Path(out_dir), data, []
        report.started = None
        return report

    @property
    def paths(self) -> dict[str, Path]:
        return {ext: self.out_dir / f"{self.name}.{ext}" for ext in ("json", "md", "png")}

    def add(self, text: str) -> None:
        self.markdown.append(text.rstrip() + "\n")

    def write(self, figure: Any | None = None) -> dict[str, Path]:
        """Write ``<name>.json``, ``<name>.md`` and (given a matplotlib figure) ``<name>.png``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.started is not None:  # not a re-render
            self.data["wall_seconds"] = round(time.monotonic() - self.started, 1)
            self.data["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        paths = self.paths
        if figure is not None:
            figure.savefig(paths["png"], dpi=110, bbox_inches="tight")
            self.data["plot"] = paths["png"].name
        paths["json"].write_text(json.dumps(self.data, indent=2, default=_json_default) + "\n")
        header = [
            f"# {self.name} benchmark\n",
            f"Command: `{self.data['command']}` — {self.data['created_at']}, {self.data['wall_seconds']} s.\n",
            f"Machine: {machine_line(self.data['machine'])}; load average at end "
            f"{' / '.join(str(x) for x in self.data['machine']['load_average_at_end'])}.\n",
        ]
        if figure is not None:
            header.append(f"![{self.name}]({paths['png'].name})\n")
        paths["md"].write_text("\n".join(header + self.markdown))
        return paths


    def publish(self, markdown: Any, plot: Any) -> dict[str, Path]:
        """Render the Markdown body and the plot from ``data``, write the report, say where."""
        markdown(self, self.data)
        paths = self.write(plot(self.data))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on these machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
