"""Soak: ten minutes at ten times a busy gate's load, memory and latency every 10 s.

Issue 8 point 4. A *busy gate* here is one dock door of a bonded warehouse at its peak: a
portal of two readers — one R2000, one ThingMagic — in continuous inventory (a reader with
tags in its field streams at line rate whatever else happens), and one pallet of 20 tagged
cartons through the door every 10 s, each with its gate pass scanned. 360 pallets an hour is
a forklift doing nothing but cycling through that one door: more than a door sustains over
a shift, so it is a fair "busy". Ten times that, which this benchmark runs on one daemon
through :mod:`bench._rig` (the rig of bench.load, same set-up and counting): 20 readers
(10 R2000 + 10 ThingMagic) at full 115200-baud line rate and a 20-item pallet every second.

Every 10 s it samples the daemon's RSS and CPU (``/proc``) and the decision latency of the
passages whose last beam cleared in those 10 s (last beam cleared → decision at the
subscriber; p50 / p99 / max); plots RSS and latency over time to docs/benchmarks-soak.png
(matplotlib, the ``bench`` extra) and summarises: RSS first / last / max and its slope in
MiB/hour (least squares over every sample), latency p99 over the whole run beside the bare
MQTT hop, decisions made / received / lost, and the frame counters of every reader.

Run: ``python -m bench soak`` (10 minutes; plan 11), or ``python -m bench soak
--duration-s 40`` for a smoke run. Prints a table and writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

from bench import _rig
from bench.whitelist import mib, percentile

RESULTS = Path(__file__).parent / "results" / "soak.json"
PLOT = Path(__file__).parent.parent / "docs" / "benchmarks-soak.png"
BUSY_GATE_READERS = 2
BUSY_GATE_PERIOD_S = 10.0
LOAD_FACTOR = 10
WINDOW_S = 10.0
TARGETS = {"e2e_p99_ms": 50.0, "decisions_lost": 0}


def windows(run: _rig.Run) -> list[dict[str, float | int | None]]:
    """One row per sampling window: RSS at its end, CPU over it, latency of its passages."""
    rows: list[dict[str, float | int | None]] = []
    for before, after in zip(run.samples, run.samples[1:], strict=False):
        latencies = [
            p.latency_s * 1000
            for p in run.passages
            if p.latency_s is not None and before.at_s <= p.cleared_at_s < after.at_s
        ]
        span = after.at_s - before.at_s
        rows.append(
            {
                "at_s": round(after.at_s, 1),
                "rss_mb": mib(after.rss_kib),
                "cpu_pct": round(100 * (after.cpu_s - before.cpu_s) / span, 1) if span else None,
                "passages": len(latencies),
                "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
                "p99_ms": round(percentile(latencies, 99), 2) if latencies else None,
                "max_ms": round(max(latencies), 2) if latencies else None,
            }
        )
    return rows


def soak_figures(run: _rig.Run) -> dict[str, object]:
    figures = _rig.figures(run)
    hours = [s.at_s / 3600 for s in run.samples]
    rss = [s.rss_kib / 1024 for s in run.samples]
    slope = statistics.linear_regression(hours, rss).slope if len(set(hours)) > 1 else 0.0
    return figures | {
        "busy_gate": (
            f"{BUSY_GATE_READERS} readers at line rate, a {run.shape.passage_tags}-item "
            f"pallet every {BUSY_GATE_PERIOD_S:.0f} s"
        ),
        "load_factor": LOAD_FACTOR,
        "rss_first_mb": mib(run.samples[0].rss_kib),
        "rss_last_mb": mib(run.samples[-1].rss_kib),
        "rss_max_mb": mib(max(s.rss_kib for s in run.samples)),
        "rss_slope_mb_per_hour": round(slope, 2),
        "windows": windows(run),
    }


def plot(figures: dict[str, object], run: _rig.Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = figures["windows"]
    assert isinstance(rows, list)
    minutes = [float(r["at_s"]) / 60 for r in rows]
    fig, (memory, latency) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5))
    rss = [s.rss_kib / 1024 for s in run.samples]
    memory.plot([s.at_s / 60 for s in run.samples], rss, marker=".", color="tab:blue")
    memory.set_ylabel("daemon RSS (MiB)")
    # Not from zero, so that a slow leak shows; at least 4 MiB tall, so that noise does not.
    pad = max(2.0, (max(rss) - min(rss)) * 0.2)
    memory.set_ylim(min(rss) - pad, max(rss) + pad)
    memory.grid(alpha=0.3)
    memory.set_title(
        f"RSS first {figures['rss_first_mb']} / last {figures['rss_last_mb']} / max "
        f"{figures['rss_max_mb']} MiB, slope {figures['rss_slope_mb_per_hour']:+} MiB/h",
        fontsize=9,
    )

    def series(key: str) -> list[float]:
        return [float("nan") if r[key] is None else float(r[key]) for r in rows]

    latency.plot(minutes, series("p50_ms"), marker=".", label="p50")
    latency.plot(minutes, series("p99_ms"), marker=".", label="p99")
    latency.plot(minutes, series("max_ms"), linestyle=":", color="grey", label="max")
    target = TARGETS["e2e_p99_ms"]
    latency.axhline(target, color="tab:red", linestyle="--", linewidth=1, label="p99 target")
    latency.set_ylabel("last beam clear → decision (ms)")
    latency.set_xlabel("minutes into the run")
    latency.set_ylim(bottom=0)
    latency.grid(alpha=0.3)
    latency.legend(loc="upper right", fontsize=8)
    latency.set_title(
        f"per {WINDOW_S:.0f} s window; overall p50 {figures['e2e_p50_ms']} / p99 "
        f"{figures['e2e_p99_ms']} ms; decisions made {figures['decisions_made']}, "
        f"received {figures['decisions_received']}, lost {figures['decisions_lost']}",
        fontsize=9,
    )
    shape = run.shape
    fig.suptitle(
        f"edgegate soak, {LOAD_FACTOR}× a busy gate: {shape.r2000} R2000 + "
        f"{shape.thingmagic} ThingMagic at {shape.baudrate} baud, a "
        f"{shape.passage_tags}-item pallet every {shape.passage_period_s} s, "
        f"{run.window_s / 60:.1f} min",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


def report(figures: dict[str, object], run: _rig.Run) -> None:
    f = figures
    print(
        f"{'t (s)':>7} {'RSS MiB':>8} {'CPU %':>6} {'n':>4} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    rows = f["windows"]
    assert isinstance(rows, list)
    for r in rows:
        print(
            f"{r['at_s']:>7} {r['rss_mb']:>8} {r['cpu_pct']!s:>6} {r['passages']:>4} "
            f"{r['p50_ms']!s:>8} {r['p99_ms']!s:>8} {r['max_ms']!s:>8}"
        )
    print()
    summary = [
        ("load", f"{LOAD_FACTOR}× a busy gate ({f['busy_gate']})", ""),
        (
            "readers",
            f"{f['readers_r2000']} R2000 + {f['readers_thingmagic']} ThingMagic",
            f"mean {f['bytes_per_s_per_reader_mean']:,} B/s each, line rate "
            f"{f['line_rate_bytes_per_s']:,.0f} B/s",
        ),
        (
            "daemon RSS first / last / max",
            f"{f['rss_first_mb']} / {f['rss_last_mb']} / {f['rss_max_mb']} MiB",
            f"slope {f['rss_slope_mb_per_hour']:+} MiB/hour over {f['window_s']} s",
        ),
        (
            "daemon CPU, share of one core",
            f"{f['daemon_cpu_percent_of_core']} %",
            f"readers' process {f['readers_process_cpu_pct']} %, bench "
            f"{f['bench_process_cpu_pct']} %",
        ),
        (
            "latency p50 / p99 / max",
            f"{f['e2e_p50_ms']} / {f['e2e_p99_ms']} / {f['e2e_max_ms']} ms",
            f"target p99 <= {TARGETS['e2e_p99_ms']:.0f} ms; bare QoS 1 publish p99 "
            f"{f['bare_mqtt_p99_ms']} ms",
        ),
        (
            "passages driven / decided / passed",
            f"{f['passages_driven']} / {f['passages_decided']} / {f['passages_passed']}",
            f"{f['passages_complete']} with every item read",
        ),
        (
            "decisions made / received / lost",
            f"{f['decisions_made']} / {f['decisions_received']} / {f['decisions_lost']}",
            f"duplicates {f['duplicates']}",
        ),
        (
            "frames sent / counted by daemon",
            f"{f['frames_sent_by_simulators']:,} / {f['frames_counted_by_daemon']:,}",
            f"dropped {f['dropped_frames']}",
        ),
    ]
    width = max(len(r[0]) for r in summary)
    for name, value, note in summary:
        print(f"{name:<{width}}  {value:<28} {note}")
    print()
    _rig.print_readers(figures)
    plot(figures, run, PLOT)
    _rig.write_results(RESULTS, figures, TARGETS, run, summary_of(figures))


def summary_of(figures: dict[str, object]) -> str:
    """The soak in one paragraph (docs/benchmarks.md prints it under the plot)."""
    f = figures
    return (
        f"{float(str(f['window_s'])) / 60:.1f} minutes at {LOAD_FACTOR}× a busy gate "
        f"({f['busy_gate']}): {f['readers_r2000']} R2000 + {f['readers_thingmagic']} "
        f"ThingMagic readers at {f['baudrate']} baud and a {f['passage_tags']}-item pallet "
        f"every {f['passage_period_s']} s into one daemon. Daemon RSS {f['rss_first_mb']} MiB "
        f"first, {f['rss_last_mb']} MiB last, {f['rss_max_mb']} MiB max (slope "
        f"{f['rss_slope_mb_per_hour']:+} MiB/hour); CPU {f['daemon_cpu_percent_of_core']} % of "
        f"one core. Last beam clear → decision at a subscriber p50 {f['e2e_p50_ms']} ms, p99 "
        f"{f['e2e_p99_ms']} ms, max {f['e2e_max_ms']} ms (a bare QoS 1 publish through the "
        f"same broker: p99 {f['bare_mqtt_p99_ms']} ms). Decisions made {f['decisions_made']}, "
        f"received {f['decisions_received']}, lost {f['decisions_lost']}; frames sent "
        f"{f['frames_sent_by_simulators']:,}, counted by the daemon "
        f"{f['frames_counted_by_daemon']:,}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--duration-s", type=float, default=600.0)
    args = parser.parse_args(argv)
    gates = LOAD_FACTOR
    shape = _rig.Shape(
        r2000=gates * BUSY_GATE_READERS // 2,
        thingmagic=gates * BUSY_GATE_READERS // 2,
        field_tags=16,
        passage_tags=20,
        passage_period_s=BUSY_GATE_PERIOD_S / LOAD_FACTOR,
        duration_s=args.duration_s,
        sample_every_s=WINDOW_S,
    )
    run = asyncio.run(_rig.run(shape))
    report(soak_figures(run), run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
