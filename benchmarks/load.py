"""End-to-end load on the search service: stepped open-loop request rates with mixed photo / text /
photo+text queries, latency percentiles and errors by status code per step, the saturation point, and
goodput beyond it (the service sheds with RESOURCE_EXHAUSTED before doing any work for the shed call).

    python benchmarks/load.py                   # ~4-5 min on 2 cores
    python benchmarks/load.py --step-seconds 4 --fractions 0.5,1 --overload 2 --products 100 --no-compare   # smoke size

What runs, on 127.0.0.1 only: the default model in the real tritonserver (shipped serving settings), the
bundled-size catalog (600 products) indexed through Triton, and ``lenscope serve search`` in its own
process with ``--max-inflight`` (LENSCOPE_MAX_INFLIGHT). The load generator (this process, grpc.aio) is
open-loop (see open_loop.py): request i is due at i / rate and its latency counts from then.

1. Warm-up, then a closed-loop capacity estimate C (``max_inflight`` callers back to back).
2. Steps at ``--fractions`` x C, ``--step-seconds`` each, with a pause between steps to drain.
3. Saturation = the highest step that still answers >= 95 % of the offered rate with <= 1 % errors.
4. Overload steps at ``--overload`` x saturation (default 1.6x and 2.4x): **goodput** (OK answers/s,
   and its ratio to the saturation throughput), the shed share and the shed calls' p50/p99.
5. Side by side at the heaviest overload step, each against a fresh service process on the same
   Triton and index, right after: ``--compare-inflight N`` (another admission limit) and
   ``--compare-queued M`` (``LENSCOPE_MAX_QUEUED_RPCS``: the gRPC queue in front of admission that
   the service shipped with before; 0 now). Ratios between these rows survive the box's noise better
   than the absolute figures. ``--compare-switch-ms X``: Python's thread switch interval of the service
   process (``LENSCOPE_GIL_SWITCH_INTERVAL_MS``; the polling thread that answers a shed call waits for the GIL behind the engine threads).

Everything shares 2 cores here (Triton's python stubs, the service, this generator): the saturation rate
is this box's, not a pod's. Every step is bounded in count and time; each request has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import open_loop  # noqa: E402
import reporting  # noqa: E402
import shed_probe  # noqa: E402
import stack  # noqa: E402

from lenscope.client.service.settings import ServiceSettings  # noqa: E402

OK_SHARE = 0.95
MAX_ERROR_RATE = 0.01


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        mix[kind.strip()] = float(weight)
    return mix


def saturation(steps: list[dict[str, Any]], ok_share: float = OK_SHARE,
               max_error_rate: float = MAX_ERROR_RATE) -> dict[str, Any] | None:
    """The highest offered rate that was still served: >= 95 % answered OK, <= 1 % errors."""
    good = [s for s in steps if s["ok_rps"] >= ok_share * s["offered_rps"] and (s["error_rate"] or 0) <= max_error_rate]
    return max(good, key=lambda s: s["offered_rps"]) if good else None


PROBE_KIND = "probe:text"  # the probe client's calls among a step's outcomes
FRONT_MARK = "(client/service/front.py)"  # the side-by-side row served through the admission front


async def probed_step(driver: open_loop.Driver, args: argparse.Namespace, rate: float,
                      tag: str) -> tuple[list[open_loop.Outcome], dict[str, Any] | None]:
    """One open-loop step at ``rate`` in all, part of it (``--probe-rate``, at most a quarter) sent by the
    light probe client (shed_probe.py, its own process) beside the generator. The probe's calls are
    merged into the step's outcomes (so goodput counts every OK answer of the offered rate) and also
    summarised on their own."""
    probe_rate = min(args.probe_rate, rate / 4)
    if probe_rate <= 0:
        return await driver.step(rate, args.step_seconds), None
    out = Path(args.workdir) / f"probe-{tag}.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("shed_probe.py")), driver.address,
        "--seconds", str(args.step_seconds), "--rate", f"{probe_rate:g}", "--deadline-s", str(args.deadline_s),
        "--out", str(out), stdout=asyncio.subprocess.PIPE)
    try:
        await asyncio.wait_for(proc.stdout.readline(), timeout=30)  # "ready": its channel is up
        outcomes = await driver.step(rate - probe_rate, args.step_seconds)
        await asyncio.wait_for(proc.wait(), timeout=args.deadline_s + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"probe client failed (exit {proc.returncode}); see {out}")
    rows = json.loads(out.read_text())
    outcomes += [open_loop.Outcome(r["due_s"], 0.0, r["latency_ms"], r["code"], PROBE_KIND) for r in rows]
    return outcomes, {"rate": probe_rate, **shed_probe.summarise(rows)}


async def run(args: argparse.Namespace, stack_: stack.SearchStack, report: reporting.Report) -> dict[str, Any]:
    queries = open_loop.query_mix(stack_.catalog_root, parse_mix(args.mix), count=500)
    steps: list[dict[str, Any]] = []
    async with open_loop.Driver(stack_.service.address, queries, deadline_s=args.deadline_s) as driver:
        warm = await driver.closed(2, args.warmup_seconds)
        print(f"warm-up: {warm}")
        capacity = await driver.closed(args.max_inflight, args.calibrate_seconds)
        estimate = max(capacity["ok_per_s"], 1.0)
        print(f"closed-loop capacity estimate: {estimate:.1f} OK/s at concurrency {args.max_inflight} ({capacity['codes']})")
        fractions = list(args.fractions)
        extra = 0
        while fractions:
            fraction = fractions.pop(0)
            rate = round(estimate * fraction, 1)
            outcomes = await driver.step(rate, args.step_seconds)
            summary = {"fraction_of_estimate": fraction, **open_loop.summarise(outcomes, rate, args.step_seconds)}
            steps.append(summary)
            lat = summary["ok_latency_ms"]
            print(f"step {rate:7.1f} rps: ok {summary['ok_rps']:7.1f}/s p50 {lat['p50']} p99 {lat['p99']} ms "
                  f"codes {summary['codes']} shed p99 {summary['shed_latency_ms']['p99']} ms")
            await asyncio.sleep(args.pause_seconds)
            if not fractions and extra < args.extra_steps and saturation(steps) is steps[-1]:
                # The closed-loop estimate was low (it often is on a busy box): keep climbing until a
                # step is past saturation, at most --extra-steps more.
                extra += 1
                fractions.append(round(fraction * 1.5, 2))

    sat = saturation(steps)
    sat_rate = sat["offered_rps"] if sat else None
    sat_ok = sat["ok_rps"] if sat else None
    overload: list[dict[str, Any]] = []
    compare: list[dict[str, Any]] = []
    if sat_rate:
        async with open_loop.Driver(stack_.service.address, queries, deadline_s=args.deadline_s) as driver:
            for factor in args.overload:
                rate = round(sat_rate * factor, 1)
                outcomes, probe = await probed_step(driver, args, rate, f"overload-{factor:g}")
                step = {"x_saturation": factor, **open_loop.summarise(outcomes, rate, args.step_seconds), "probe": probe}
                step["goodput_ratio"] = reporting.ratio(step["ok_rps"], sat_ok, 3)
                overload.append(step)
                print(f"overload {factor}x ({rate} rps): ok {step['ok_rps']}/s = {step['goodput_ratio']} x saturation, "
                      f"shed p99 {step['shed_latency_ms']['p99']} ms (probe client {(probe or {}).get('shed_p99_ms')} ms), "
                      f"codes {step['codes']}")
                await asyncio.sleep(args.pause_seconds)
        # The heaviest overload step once more, against fresh service processes: the shipped service
        # (a fresh process too, so the rows differ only in the setting), then each alternative.
        heavy_rate = overload[-1]["offered_rps"] if overload else None
        variants = [("shipped", args.max_inflight, {})]
        for inflight in args.compare_inflight:
            variants.append((f"max_inflight {inflight}", inflight, {}))
        if args.compare_queued is not None and args.compare_queued >= 0:
            variants.append((f"max_queued_rpcs {args.compare_queued}", args.max_inflight,
                             {"LENSCOPE_MAX_QUEUED_RPCS": str(args.compare_queued)}))
        if args.compare_switch_ms:
            variants.append((f"gil_switch_interval_ms {args.compare_switch_ms:g}", args.max_inflight,
                             {"LENSCOPE_GIL_SWITCH_INTERVAL_MS": f"{args.compare_switch_ms:g}"}))
        if args.compare_front:
            variants.append((f"admission front {FRONT_MARK}", args.max_inflight, {}))
        if args.compare_triton_nice:  # last: raising niceness back may need privileges
            variants.append((f"tritonserver nice {args.compare_triton_nice}", args.max_inflight, {}))
        if heavy_rate and len(variants) > 1:
            compare = await compare_variants(args, stack_, queries, variants, heavy_rate, sat_ok)
    max_ok = max(steps + overload, key=lambda s: s["ok_rps"])
    beyond = [s for s in steps if sat_rate is not None and s["offered_rps"] > sat_rate]

    return {
        "capacity_estimate": {"closed_loop": capacity, "ok_per_s": estimate},
        "steps": steps,
        "saturation": {
            "rule": f"highest offered rate with OK >= {OK_SHARE:.0%} of offered and errors <= {MAX_ERROR_RATE:.0%}",
            "offered_rps": sat_rate,
            "ok_rps": sat["ok_rps"] if sat else None,
            "p99_ms": sat["ok_latency_ms"]["p99"] if sat else None,
            "max_ok_rps_any_step": max_ok["ok_rps"],
        },
        "beyond_saturation": [
            {"offered_rps": s["offered_rps"], "x_saturation": reporting.ratio(s["offered_rps"], sat_rate, 2),
             "ok_rps": s["ok_rps"], "goodput_ratio": reporting.ratio(s["ok_rps"], sat_ok, 3),
             "shed_rate": s["shed_rate"], "shed_p50_ms": s["shed_latency_ms"]["p50"],
             "shed_p99_ms": s["shed_latency_ms"]["p99"], "ok_p99_ms": s["ok_latency_ms"]["p99"],
             "shed_p99_after_send_ms": s.get("shed_after_send_ms", {}).get("p99"),
             "probe_shed_p99_ms": (s.get("probe") or {}).get("shed_p99_ms"),
             "probe_shed_calls": (s.get("probe") or {}).get("shed"),
             "other_errors": {c: n for c, n in s["codes"].items() if c not in ("OK", "RESOURCE_EXHAUSTED")}}
            for s in [*beyond, *overload]
        ],
        "overload": overload,
        "compare": compare,
    }


async def compare_variants(args: argparse.Namespace, stack_: stack.SearchStack, queries, variants: list,
                           rate: float, sat_ok: float | None) -> list[dict[str, Any]]:
    """The same step at ``rate`` against a fresh service process per variant, ``--compare-rounds`` times,
    each round in another order (round r starts at variant r), so that no variant always runs first or
    after the same neighbour on this shared box; each row pools its variant's rounds."""
    pooled: dict[str, list[open_loop.Outcome]] = {name: [] for name, _, _ in variants}
    for r in range(args.compare_rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for name, inflight, env in order:
            log_path = Path(args.workdir) / f"search-service-{_slug(name)}.log"
            second = stack_.restart_service(inflight, log_path, env=env)
            niced = name.startswith("tritonserver nice")
            front = None
            try:
                if niced:
                    stack.renice_tree(stack_.triton.pid, args.compare_triton_nice)
                address = second.address
                if FRONT_MARK in name:  # the same service, called through the front process
                    front = stack.FrontProcess.start(second.address, inflight, log_path.with_suffix(".front.log"))
                    address = front.address
                async with open_loop.Driver(address, queries, deadline_s=args.deadline_s) as driver:
                    await driver.closed(2, min(args.warmup_seconds, 3.0))
                    outcomes, _ = await probed_step(driver, args, rate, f"{_slug(name)}-{r}")
            finally:
                if front is not None:
                    front.stop()
                if niced:
                    stack.renice_tree(stack_.triton.pid, args.triton_nice)
                second.stop()
            pooled[name] += outcomes
            one = open_loop.summarise(outcomes, rate, args.step_seconds)
            print(f"compare {name} (round {r + 1}/{args.compare_rounds}) at {rate} rps: ok {one['ok_rps']}/s "
                  f"p99 {one['ok_latency_ms']['p99']} ms shed p99 {one['shed_latency_ms']['p99']} ms codes {one['codes']}")
            await asyncio.sleep(args.pause_seconds)
    rows = []
    for name, inflight, env in variants:
        outcomes = pooled[name]
        probe_rows = [{"latency_ms": o.latency_ms, "code": o.code} for o in outcomes if o.kind == PROBE_KIND]
        row = {"variant": name, "max_inflight": inflight, "env": env, "rounds": args.compare_rounds,
               **open_loop.summarise(outcomes, rate, args.step_seconds * args.compare_rounds),
               "probe": shed_probe.summarise(probe_rows) if probe_rows else None}
        row["goodput_ratio"] = reporting.ratio(row["ok_rps"], sat_ok, 3)
        rows.append(row)
    return rows


def plot(data: dict[str, Any]):
    plt = reporting.pyplot()
    steps = data["steps"]
    x = [s["offered_rps"] for s in steps]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    ax1.plot(x, [s["ok_rps"] for s in steps], "o-", label="answered OK /s")
    ax1.plot(x, [s["codes"].get("RESOURCE_EXHAUSTED", 0) / data["settings"]["step_seconds"] for s in steps], "s-",
             label="shed (RESOURCE_EXHAUSTED) /s")
    other = [sum(n for c, n in s["codes"].items() if c not in ("OK", "RESOURCE_EXHAUSTED")) / data["settings"]["step_seconds"]
             for s in steps]
    ax1.plot(x, other, "x-", label="other errors /s")
    ax1.plot(x, x, ":", color="grey", label="offered")
    ax1.set_xlabel("offered rate (requests/s, open loop)")
    ax1.set_ylabel("responses/s")
    ax1.set_title("throughput by outcome")
    ax2.plot(x, [s["ok_latency_ms"]["p50"] for s in steps], "o-", label="OK p50")
    ax2.plot(x, [s["ok_latency_ms"]["p95"] for s in steps], "o--", label="OK p95")
    ax2.plot(x, [s["ok_latency_ms"]["p99"] for s in steps], "o:", label="OK p99")
    ax2.plot(x, [s["shed_latency_ms"]["p50"] for s in steps], "s-", label="shed (RESOURCE_EXHAUSTED) p50")
    ax2.plot(x, [s["shed_latency_ms"]["p99"] for s in steps], "s:", label="shed p99")
    ax2.axhline(data["settings"]["deadline_s"] * 1000, color="red", alpha=0.4, label="client deadline")
    ax2.set_yscale("log")
    ax2.set_xlabel("offered rate (requests/s, open loop)")
    ax2.set_ylabel("latency from due time (ms)")
    ax2.set_title("latency")
    sat = data["saturation"]["offered_rps"]
    for ax in (ax1, ax2):
        if sat:
            ax.axvline(sat, color="green", alpha=0.4, label=f"saturation {sat} rps")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def markdown(report: reporting.Report, data: dict[str, Any]) -> None:
    s, sat = data["settings"], data["saturation"]
    report.add(f"Search service (`lenscope serve search`, own process, max_inflight {s['max_inflight']}) on "
               f"{data['setup']['products']} products, default model in tritonserver (shipped settings); "
               f"query mix {s['mix']}; client deadline {s['deadline_s']} s; open-loop steps of "
               f"{s['step_seconds']} s at fractions of a closed-loop capacity estimate "
               f"({data['capacity_estimate']['ok_per_s']:.1f} OK/s). Latency counts from each request's due time.\n")
    report.add(f"**Saturation: {sat['offered_rps']} requests/s** ({sat['rule']}; p99 there {sat['p99_ms']} ms). "
               f"Highest OK rate in any step: {sat['max_ok_rps_any_step']}/s.\n")
    report.add("## Steps\n")
    report.add(reporting.table(
        ["offered rps", "OK rps", "OK p50 ms", "OK p95 ms", "OK p99 ms", "shed share", "shed p50 ms", "shed p99 ms",
         "codes", "gen. lag p99 ms"],
        [(st["offered_rps"], st["ok_rps"], st["ok_latency_ms"]["p50"], st["ok_latency_ms"]["p95"],
          st["ok_latency_ms"]["p99"], st["shed_rate"], st["shed_latency_ms"]["p50"], st["shed_latency_ms"]["p99"],
          ", ".join(f"{c} {n}" for c, n in st["codes"].items()), st["generator_lag_ms"]["p99"])
         for st in data["steps"]]))
    if data["beyond_saturation"]:
        report.add("\n## Beyond saturation: goodput\n")
        report.add(f"Goodput = OK answers/s; ratio = goodput / the saturation step's OK rate ({sat['ok_rps']}/s). "
                   "The last rows are the overload steps at fixed multiples of saturation.\n")
        report.add(reporting.table(
            ["offered rps", "x saturation", "OK rps (goodput)", "goodput / saturation", "shed share", "shed p50 ms",
             "shed p99 ms", "shed p99 ms after send", "probe client: shed p99 ms (calls)", "OK p99 ms", "other errors"],
            [(b["offered_rps"], b["x_saturation"], b["ok_rps"], b["goodput_ratio"], b["shed_rate"], b["shed_p50_ms"],
              b["shed_p99_ms"], b.get("shed_p99_after_send_ms", "—"), _probe_cell(b.get("probe_shed_p99_ms"), b.get("probe_shed_calls")),
              b["ok_p99_ms"], ", ".join(f"{c} {n}" for c, n in b["other_errors"].items()) or "none")
             for b in data["beyond_saturation"]]))
    compare = data.get("compare") or []
    if compare:
        rounds = compare[0].get("rounds", 1)
        pooled = (f"; {rounds} rounds, each in another order, each row pooling its {rounds} steps"
                  if rounds > 1 else "")
        report.add(f"\n## Side by side at {compare[0]['offered_rps']} rps (the heaviest overload step, each a fresh "
                   f"service process on the same Triton and index, one after the other{pooled})\n")
        report.add(reporting.table(
            ["service", "OK rps", "goodput / saturation", "OK p50 ms", "OK p99 ms", "shed share", "shed p50 ms",
             "shed p99 ms", "shed p99 ms after send", "probe client: shed p50 / p99 ms (calls)", "codes"],
            [(c["variant"], c["ok_rps"], c["goodput_ratio"], c["ok_latency_ms"]["p50"], c["ok_latency_ms"]["p99"],
              c["shed_rate"], c["shed_latency_ms"]["p50"], c["shed_latency_ms"]["p99"],
              c.get("shed_after_send_ms", {}).get("p99", "—"),
              _probe_cell((c.get("probe") or {}).get("shed_p99_ms"), (c.get("probe") or {}).get("shed"),
                          (c.get("probe") or {}).get("shed_p50_ms")),
              ", ".join(f"{k} {n}" for k, n in c["codes"].items()))
             for c in compare]))
        report.add("\nAdmission happens before any work for the call: gRPC itself refuses RPCs beyond "
                   "max_inflight + spare handler threads on its polling thread; a call arriving while every "
                   "max_inflight slot is taken is shed there too (the polling thread answers it itself, without "
                   "receiving the request message or handing it to a handler thread); otherwise the "
                   "servicer takes a slot before decoding the request. A shed call costs a counter and a log "
                   "line. `max_queued_rpcs` > 0 puts a queue in front of admission (the old default 64): calls that "
                   "pass the polling thread's check then wait in it for a handler thread.\n")
    report.add("\nGenerator lag is how late this process sent requests (it shares the 2 cores); latency "
               "includes it. \"after send\" leaves the lag out: the time from the moment the call left this "
               "process to its answer, which still includes the time this generator's event loop took to read "
               "the answer.\n")
    report.add(f"\n**Probe client**: during each overload and side-by-side step, {s.get('probe_rate', 0):g} of "
               "the offered calls/s come from a second client in its own process (`benchmarks/shed_probe.py`, "
               "sync gRPC, small text searches on a fixed schedule, latency from each call's due time); the "
               "generator sends the rest. Its shed answers are what a caller that is not itself overloaded "
               "sees; the generator's include its own backlog (one event loop sending ~100 calls/s on the same "
               "2 cores). The step's other columns count both clients' calls.\n")
    if s.get("triton_nice") or s.get("compare_triton_nice"):
        report.add(f"\n**tritonserver niceness**: {s.get('triton_nice', 0)} for the whole run"
                   + (f"; the row `tritonserver nice {s['compare_triton_nice']}` runs the shipped service with every "
                      f"thread of tritonserver and its python-backend stubs at nice {s['compare_triton_nice']}"
                      if s.get("compare_triton_nice") else "")
                   + ". On this box Triton's CPU inference, the service and the generator share 2 cores; in a "
                   "Kubernetes deployment Triton and the search service are separate pods with their own CPU "
                   "requests, which a lower CPU priority for Triton models (the service is scheduled first when "
                   "both are runnable). It is an explicit benchmark setting, not a service change.\n")
    if s.get("compare_front"):
        report.add(f"\n**Admission front**: the row `admission front {FRONT_MARK}` calls the shipped service "
                   "through `python -m lenscope.client.service.front`, a second, light process in front of it that "
                   "admits at most max_inflight searches and answers the rest with RESOURCE_EXHAUSTED on its own "
                   "gRPC polling thread, whose GIL no engine thread holds; admitted calls are forwarded as bytes "
                   "(one more local hop).\n")


def _slug(name: str) -> str:
    """A row's name as a file name part ("admission front (client/service/front.py)" has slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def _probe_cell(p99: float | None, calls: int | None, p50: float | None = None) -> str:
    if p99 is None:
        return "—"
    return (f"{p50} / {p99}" if p50 is not None else f"{p99}") + f" ({calls})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    floats = lambda s: [float(x) for x in s.split(",") if x.strip()]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--products", type=int, default=600, help="catalog size (600 = the bundled demo catalog)")
    shipped = ServiceSettings.model_fields["max_inflight"].default
    p.add_argument("--max-inflight", type=int, default=shipped,
                   help=f"service admission limit (LENSCOPE_MAX_INFLIGHT; {shipped} = shipped)")
    p.add_argument("--fractions", type=floats, default=[0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5],
                   help="step rates as fractions of the closed-loop capacity estimate")
    p.add_argument("--overload", type=floats, default=[1.6, 2.4],
                   help="overload steps as multiples of the measured saturation rate (goodput is reported there)")
    p.add_argument("--step-seconds", type=float, default=12.0)
    p.add_argument("--extra-steps", type=int, default=3, help="steps (x1.5 each) added while the last one is not saturated")
    p.add_argument("--pause-seconds", type=float, default=2.0)
    p.add_argument("--warmup-seconds", type=float, default=5.0)
    p.add_argument("--calibrate-seconds", type=float, default=6.0)
    p.add_argument("--deadline-s", type=float, default=1.0, help="client deadline per request")
    p.add_argument("--mix", default="image=0.4,text=0.4,image+text=0.2")
    ints = lambda s: [int(x) for x in s.split(",") if x.strip() and int(x)]  # noqa: E731
    p.add_argument("--compare-inflight", type=ints, default=[8, 2],
                   help="other admission limits, side by side, comma-separated (8: the old default); 0 = none")
    p.add_argument("--compare-queued", type=int, default=64,
                   help="also run the heaviest step with LENSCOPE_MAX_QUEUED_RPCS=N (64 = the old default); -1 = not")
    p.add_argument("--compare-switch-ms", type=float, default=1.0,
                   help="also run the heaviest step with LENSCOPE_GIL_SWITCH_INTERVAL_MS=X (the shipped value is "
                        "Python's 5.0); 0 = not")
    p.add_argument("--compare-triton-nice", type=int, default=10,
                   help="also run the heaviest step with every tritonserver thread at this nice value (models "
                        "Triton in its own pod: the service gets the CPU first); 0 = not")
    p.add_argument("--triton-nice", type=int, default=0,
                   help="nice value of tritonserver and its stubs for the whole run (0 = as started)")
    p.add_argument("--compare-front", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the heaviest step through the admission front process (client/service/front.py) "
                        "in front of the shipped service")
    p.add_argument("--compare-rounds", type=int, default=1,
                   help="side-by-side rounds; each variant's row pools its rounds, each round in another order")
    p.add_argument("--probe-rate", type=float, default=10.0,
                   help="calls/s of the light probe client (own process) beside each overload and side-by-side "
                        "step; 0 = no probe")
    p.add_argument("--no-compare", action="store_true", help="no side-by-side runs")
    p.add_argument("--spec", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=reporting.WORK / "load")
    reporting.add_output_options(p)
    p.add_argument("--from-json", type=Path, default=None, help="re-render an earlier run's JSON (no measuring)")
    args = p.parse_args(argv)
    if args.compare_rounds < 1:
        p.error(f"--compare-rounds must be >= 1, got {args.compare_rounds}")
    if args.no_compare:
        args.compare_inflight, args.compare_queued, args.compare_switch_ms = [], None, 0.0
        args.compare_triton_nice, args.compare_front = 0, False
    args.out = reporting.output_dir(args.out, args.publish)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.from_json:  # re-render an earlier run's Markdown and plot, measuring nothing
        data = json.loads(args.from_json.read_text())
        report = reporting.Report.reopen(data, args.out)
        markdown(report, data)
        report.write(plot(data))
        return data
    report = reporting.Report("load", args.out, argv)
    print("bringing up Triton + index + search service")
    stack_ = stack.start_search_stack(args.workdir, args.products, args.max_inflight, spec=args.spec)
    try:
        if args.triton_nice:
            print(f"tritonserver at nice {args.triton_nice}: {stack.renice_tree(stack_.triton.pid, args.triton_nice)} threads")
        results = asyncio.run(run(args, stack_, report))
        service_code = stack_.service.stop()
    finally:
        stack_.stop()
    report.data.update({
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "setup": {"products": args.products, "model_hash": stack_.model_hash, "seconds": round(stack_.setup_seconds, 1),
                  "service_exit_code": service_code},
        **results,
    })
    report.publish(markdown, plot)
    return report.data


if __name__ == "__main__":
    main()
