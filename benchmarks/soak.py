"""Bounded soak: the search path held at ~80 % of its measured saturation for a while, watching for errors,
latency drift and memory growth.

    python benchmarks/soak.py                          # ~4.5 min: saturation probe + 3 min soak
    python benchmarks/soak.py --duration 4h            # hours (windows widen to duration / 20)
    python benchmarks/soak.py --rate 60                # a fixed rate instead of measuring saturation
    python benchmarks/soak.py --from-load-report .lenscope/bench/reports/load.json   # saturation from load.py

Same stack as load.py (tritonserver with the default model, the 600-product catalog indexed through it,
``lenscope serve search`` in its own process, open-loop mixed queries from this process, loopback only).
Saturation is measured at the start unless given: the highest 10-second open-loop probe step answering
>= 98 % OK with no error at all (stricter than load.py's 95 % / 1 %: a few seconds of excess are absorbed
by the admission pool and gRPC's queue, a soak's are not), because a figure from another time of day on a
shared box can be far off.

Reported: errors by status code (zero expected), latency p50/p95/p99 per window and the last/first window
p99 ratio, RSS of the service process and of tritonserver and its python-backend stubs sampled every few
seconds, with growth from the end of the first window (warm-up: lazily built caches, allocator arenas) to
the end of the run, and a least-squares slope in MB/hour. A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402
import open_loop  # noqa: E402
import reporting  # noqa: E402
import stack  # noqa: E402

from lenscope.client.service.settings import ServiceSettings  # noqa: E402

MiB = 1024 * 1024


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"duration {text!r}: expected e.g. 180, 90s, 3m, 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


class Windows:
    """Outcomes folded into fixed windows by due time, so an hours-long soak keeps only per-window arrays."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.latencies: dict[int, list[float]] = {}
        self.codes: dict[int, dict[str, int]] = {}

    def add(self, outcome: open_loop.Outcome) -> None:
        w = int(outcome.due_s // self.window_s)
        codes = self.codes.setdefault(w, {})
        codes[outcome.code] = codes.get(outcome.code, 0) + 1
        if outcome.code == "OK":
            self.latencies.setdefault(w, []).append(outcome.latency_ms)

    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for w in sorted(self.codes):
            lat = self.latencies.get(w, [])
            n = sum(self.codes[w].values())
            rows.append({"window": w, "start_s": round(w * self.window_s, 1), "requests": n,
                         "codes": dict(sorted(self.codes[w].items())),
                         "errors": n - self.codes[w].get("OK", 0),
                         **{f"p{q}_ms": round(float(np.percentile(lat, q)), 2) if lat else None for q in (50, 95, 99)}})
        return rows


async def sample_rss(pids: dict[str, int], every_s: float, stop: asyncio.Event, samples: list[dict[str, Any]],
                     t0: float) -> None:
    loop = asyncio.get_running_loop()
    previous: tuple[float, float] | None = None
    while not stop.is_set():
        sizes = {name: await loop.run_in_executor(None, stack.tree_rss, pid) for name, pid in pids.items()}
        cpu = sum([await loop.run_in_executor(None, stack.tree_cpu_seconds, pid) for pid in pids.values()])
        now = time.monotonic()
        service, triton = sizes["service"], sizes["triton"]
        stubs = sum(v for k, v in triton.items() if k != "main")
        samples.append({"t_s": round(now - t0, 1),
                        "service_mib": round(sum(service.values()) / MiB, 1),
                        "triton_mib": round(triton["main"] / MiB, 1),
                        "stubs_mib": round(stubs / MiB, 1),
                        "stubs": len(triton) - 1,
                        # machine load and the CPU share the measured stack got: errors that line up with
                        # a high load average and a low stack share are other tenants, not the stack
                        "load_1m": round(os.getloadavg()[0], 2),
                        "stack_cpu_cores": round((cpu - previous[1]) / (now - previous[0]), 2) if previous else None})
        previous = (now, cpu)
        try:
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        except asyncio.TimeoutError:
            pass


def growth(samples: list[dict[str, Any]], key: str, after_s: float) -> dict[str, Any]:
    """RSS change from the first sample at/after ``after_s`` to the last, and the least-squares slope."""
    use = [s for s in samples if s["t_s"] >= after_s] or samples
    if len(use) < 2:
        return {"first_mib": use[0][key] if use else None, "last_mib": use[-1][key] if use else None,
                "growth_mib": None, "growth_pct": None, "slope_mib_per_h": None}
    first, last = use[0][key], use[-1][key]
    t = np.array([s["t_s"] for s in use]) / 3600.0
    y = np.array([s[key] for s in use])
    slope = float(np.polyfit(t, y, 1)[0]) if np.ptp(t) > 0 else None
    return {"first_mib": first, "last_mib": last, "growth_mib": round(last - first, 1),
            "growth_pct": round(100.0 * (last - first) / first, 2) if first else None,
            "slope_mib_per_h": round(slope, 1) if slope is not None else None}


async def find_saturation(args: argparse.Namespace, stack_: stack.SearchStack, queries) -> dict[str, Any]:
    steps = []
    async with open_loop.Driver(stack_.service.address, queries, deadline_s=args.deadline_s) as driver:
        await driver.closed(2, args.warmup_seconds)
        capacity = await driver.closed(args.max_inflight, args.probe_seconds)
        estimate = max(capacity["ok_per_s"], 1.0)
        fractions = list(args.probe_fractions)
        extra = 0
        while fractions:
            fraction = fractions.pop(0)
            rate = round(estimate * fraction, 1)
            outcomes = await driver.step(rate, args.probe_seconds)
            steps.append(open_loop.summarise(outcomes, rate, args.probe_seconds))
            print(f"probe {rate:.1f} rps: ok {steps[-1]['ok_rps']}/s codes {steps[-1]['codes']} "
                  f"p99 {steps[-1]['ok_latency_ms']['p99']} ms")
            await asyncio.sleep(1.0)
            if not fractions and extra < 3 and load.saturation(steps, 0.98, 0.0) is steps[-1]:
                extra += 1
                fractions.append(round(fraction * 1.25, 2))
    # Stricter than load.py's rule (no error at all): short steps flatter capacity, because the admission
    # pool and gRPC's queue absorb a few seconds of excess that a soak cannot.
    sat = load.saturation(steps, 0.98, 0.0)
    return {"source": "measured at start (highest probe step with >= 98 % OK and no error)",
            "capacity_estimate_ok_per_s": estimate,
            "steps": [{"offered_rps": s["offered_rps"], "ok_rps": s["ok_rps"], "codes": s["codes"],
                       "p99_ms": s["ok_latency_ms"]["p99"]} for s in steps],
            "offered_rps": sat["offered_rps"] if sat else steps[0]["offered_rps"] * 0.5}


async def run(args: argparse.Namespace, stack_: stack.SearchStack) -> dict[str, Any]:
    queries = open_loop.query_mix(stack_.catalog_root, load.parse_mix(args.mix), count=500, seed=1)
    if args.rate:
        sat = {"source": "--rate", "offered_rps": args.rate / args.load_fraction}
    elif args.from_load_report:
        data = json.loads(Path(args.from_load_report).read_text())
        sat = {"source": f"{args.from_load_report} ({data['created_at']})",
               "offered_rps": data["saturation"]["offered_rps"]}
    else:
        sat = await find_saturation(args, stack_, queries)
    rate = round(args.rate or sat["offered_rps"] * args.load_fraction, 1)
    print(f"saturation {sat['offered_rps']} rps ({sat['source']}); soaking at {rate} rps for {args.duration:.0f} s")
    windows = Windows(args.window_s)
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    t0 = time.monotonic()
    pids = {"service": stack_.service.pid, "triton": stack_.triton.pid}
    async with open_loop.Driver(stack_.service.address, queries, deadline_s=args.deadline_s) as driver:
        await driver.closed(2, 2.0)  # reconnect/warm after the probe
        sampler = asyncio.create_task(sample_rss(pids, args.sample_seconds, stop, samples, t0))
        started = time.monotonic()
        await driver.step(rate, args.duration, sink=windows.add)
        soak_s = time.monotonic() - started
        stop.set()
        await sampler
    # t_s of samples is relative to t0; the soak itself starts ~2 s later
    offset = started - t0
    for s in samples:
        s["t_s"] = round(s["t_s"] - offset, 1)
    rows = windows.summary()
    for r in rows:  # machine load and stack CPU per window, from the samples that fall in it
        inside = [s for s in samples if r["start_s"] <= s["t_s"] < r["start_s"] + args.window_s]
        loads = [s["load_1m"] for s in inside]
        cores = [s["stack_cpu_cores"] for s in inside if s["stack_cpu_cores"] is not None]
        r["load_1m"] = round(float(np.mean(loads)), 2) if loads else None
        r["stack_cpu_cores"] = round(float(np.mean(cores)), 2) if cores else None
    full = [r for r in rows if (r["window"] + 1) * args.window_s <= args.duration + 1e-6] or rows
    codes: dict[str, int] = {}
    for r in rows:
        for c, n in r["codes"].items():
            codes[c] = codes.get(c, 0) + n
    first, last = full[0], full[-1]
    return {
        "saturation": sat,
        "rate_rps": rate,
        "soak_seconds": round(soak_s, 1),
        "windows": rows,
        "codes": dict(sorted(codes.items())),
        "errors": sum(n for c, n in codes.items() if c != "OK"),
        "requests": sum(codes.values()),
        "p99_first_ms": first["p99_ms"], "p99_last_ms": last["p99_ms"],
        "p99_last_over_first": reporting.ratio(last["p99_ms"], first["p99_ms"]),
        "p99_max_window_ms": max((r["p99_ms"] or 0) for r in full),
        "rss_samples": samples,
        "rss_growth": {key: growth(samples, key, args.window_s) for key in ("service_mib", "triton_mib", "stubs_mib")},
    }


def plot(data: dict[str, Any]):
    plt = reporting.pyplot()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    rows = data["windows"]
    x = [r["start_s"] + data["settings"]["window_s"] / 2 for r in rows]
    for q, style in ((50, "o-"), (95, "o--"), (99, "o:")):
        ax1.plot(x, [r[f"p{q}_ms"] for r in rows], style, label=f"p{q}")
    errs = [(xx, r["errors"]) for xx, r in zip(x, rows) if r["errors"]]
    if errs:
        ax1.scatter([e[0] for e in errs], [1 for _ in errs], marker="x", color="red", label="window with errors")
    ax1.set_ylabel("latency per window (ms)")
    ax1.set_yscale("log")
    ax1.set_title(f"soak at {data['rate_rps']} rps ({data['settings']['load_fraction']:.0%} of saturation "
                  f"{data['saturation']['offered_rps']} rps): {data['errors']} errors / {data['requests']} requests")
    s = data["rss_samples"]
    t = [p["t_s"] for p in s]
    ax2.plot(t, [p["service_mib"] for p in s], label="search service")
    ax2.plot(t, [p["triton_mib"] for p in s], label="tritonserver")
    ax2.plot(t, [p["stubs_mib"] for p in s], label="python-backend stubs (sum)")
    ax2.set_ylabel("RSS (MiB)")
    ax2.set_xlabel("seconds into the soak")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def markdown(report: reporting.Report, data: dict[str, Any]) -> None:
    s, sat = data["settings"], data["saturation"]
    report.add(f"Soak at **{data['rate_rps']} requests/s** = {s['load_fraction']:.0%} of saturation "
               f"{sat['offered_rps']} rps ({sat['source']}), for {data['soak_seconds']} s; open loop, query mix "
               f"{s['mix']}, client deadline {s['deadline_s']} s, service max_inflight {s['max_inflight']}, "
               f"{data['setup']['products']} products. Windows of {s['window_s']} s; RSS sampled every "
               f"{s['sample_seconds']} s.\n")
    bullets = [
        f"- Requests {data['requests']:,}, errors **{data['errors']}** "
        f"({', '.join(f'{c} {n}' for c, n in data['codes'].items())}).",
        f"- p99 first window {data['p99_first_ms']} ms, last window {data['p99_last_ms']} ms: "
        f"**last/first {data['p99_last_over_first']}**; worst window p99 {data['p99_max_window_ms']} ms.",
    ]
    for key, label in (("service_mib", "search service"), ("triton_mib", "tritonserver"),
                       ("stubs_mib", "python-backend stubs (sum)")):
        g = data["rss_growth"][key]
        bullets.append(f"- RSS {label}: {g['first_mib']} -> {g['last_mib']} MiB (from the end of the first window): "
                       f"growth {g['growth_mib']} MiB ({g['growth_pct']} %), slope {g['slope_mib_per_h']} MiB/h.")
    report.add("\n".join(bullets))
    if sat.get("steps"):
        report.add("\n## Saturation probe\n")
        report.add(reporting.table(["offered rps", "OK rps", "OK p99 ms", "codes"],
                                   [(p["offered_rps"], p["ok_rps"], p["p99_ms"],
                                     ", ".join(f"{c} {n}" for c, n in p["codes"].items())) for p in sat["steps"]]))
    report.add("\n## Windows\n")
    report.add("`load 1m`: the machine's load average (2 cores); `stack cores`: CPU used by the service, "
               "tritonserver and its stubs (the load generator excluded), both averaged over the window's samples.\n")
    report.add(reporting.table(["start s", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "load 1m",
                                "stack cores", "codes"],
                               [(r["start_s"], r["requests"], r["errors"], r["p50_ms"], r["p95_ms"], r["p99_ms"],
                                 r.get("load_1m"), r.get("stack_cpu_cores"),
                                 ", ".join(f"{c} {n}" for c, n in r["codes"].items())) for r in data["windows"]]))
    report.add("\nA short soak mostly shows warm-up; slopes from a few minutes extrapolate poorly: run "
               "`--duration 2h` (or more) before trusting a MiB/h figure.\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    floats = lambda s: [float(x) for x in s.split(",") if x.strip()]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=parse_duration, default=180.0, help="soak length: 180, 90s, 3m, 2h")
    p.add_argument("--window", type=parse_duration, default=None, help="latency window (default max(15 s, duration/20))")
    p.add_argument("--load-fraction", type=float, default=0.8, help="share of saturation to soak at")
    p.add_argument("--rate", type=float, default=None, help="soak at this rate (requests/s) instead")
    p.add_argument("--from-load-report", type=Path, default=None, help="take saturation from a load.py report")
    p.add_argument("--probe-fractions", type=floats, default=[0.6, 0.8, 1.0, 1.2])
    p.add_argument("--probe-seconds", type=float, default=10.0)
    p.add_argument("--warmup-seconds", type=float, default=4.0)
    p.add_argument("--sample-seconds", type=float, default=5.0, help="RSS sampling period")
    p.add_argument("--products", type=int, default=600)
    p.add_argument("--max-inflight", type=int, default=ServiceSettings.model_fields["max_inflight"].default,
                   help="service admission limit (LENSCOPE_MAX_INFLIGHT; default: the shipped one)")
    p.add_argument("--deadline-s", type=float, default=1.0)
    p.add_argument("--mix", default="image=0.4,text=0.4,image+text=0.2")
    p.add_argument("--spec", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=reporting.WORK / "soak")
    reporting.add_output_options(p)
    args = p.parse_args(argv)
    args.out = reporting.output_dir(args.out, args.publish)
    args.window_s = args.window or max(15.0, args.duration / 20)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = reporting.Report("soak", args.out, argv)
    print("bringing up Triton + index + search service")
    stack_ = stack.start_search_stack(args.workdir, args.products, args.max_inflight, spec=args.spec)
    try:
        results = asyncio.run(run(args, stack_))
    finally:
        stack_.stop()
    report.data.update({
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "setup": {"products": args.products, "model_hash": stack_.model_hash, "seconds": round(stack_.setup_seconds, 1)},
        **results,
    })
    markdown(report, report.data)
    paths = report.write(plot(report.data))
    print(f"errors {results['errors']}, p99 last/first {results['p99_last_over_first']}, "
          f"RSS growth service {results['rss_growth']['service_mib']['growth_mib']} MiB, "
          f"stubs {results['rss_growth']['stubs_mib']['growth_mib']} MiB")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return report.data


if __name__ == "__main__":
    main()
