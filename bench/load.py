"""Load: 16 readers at full 115200-baud line rate, a scanner and gate I/O into one daemon.

Issue 8 point 2. ``edgegate run`` runs as a process of its own against a real mosquitto,
fed by 12 simulated R2000 readers and 4 ThingMagic modules (a realistic mix: both protocols
the gate speaks, the R2000 — request / response rounds — being the common one), each on a
pty paced at exactly 115200 baud 8N1 and each reading its own field of 16 background tags
back to back, so that the line, not the simulator, is the bottleneck (an R2000 round of 16
tags is 348 bytes, 30 ms on the wire: long enough that the host's turnaround before the next
89 — §1 has no stream mode — costs only a few percent of the line); plus a serial scanner and
a Modbus gate I/O module. The readers run in a child process of the bench
(:mod:`bench._readers`), the scanner, the gate I/O module and the back-office subscriber in
the bench process, so the daemon's CPU is its own. While the readers stream, a passage is
driven through the gate every ``--period-s``: beams, a pallet of ``--passage-tags`` known
items in front of the portal readers, its gate pass scanned — see :mod:`bench._rig` for why
the gate is a portal (dock door) and how a continuous stream cannot keep a passage open.

Reports, each beside its ceiling or peer from the same run:

- the daemon's CPU (``utime + stime`` over the window, every thread) as a share of one
  core — target < 25 %;
- its RSS when ready, at the start and end of the window, the peak, and the growth;
- decision latency, last beam cleared at the gate I/O simulator → decision at the
  subscriber, p50 / p99 / max — target p99 ≤ 50 ms — beside a bare QoS 1 publish through
  the same broker at the same moments (the MQTT hop alone) and the beam poll interval;
- decisions made (the daemon's outbox counter) vs received (distinct ``event_id``), driven
  passages decided, passed, and complete (every item of the pallet in the decision);
- zero dropped observations: per reader, frames sent by the simulator vs the ``frames``
  counter the daemon reports in ``G/health``, compared once the readers are muted and their
  lines quiet; any disagreement is printed;
- the bytes/s each reader achieved beside the line rate (115200 / 10 = 11,520 B/s), which
  shows that the readers were really at line rate.

Run: ``python -m bench load`` (5 minutes; plan 6), or ``python -m bench load --duration-s 20``
for a smoke run. Prints a table and writes bench/results/load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bench import _rig

RESULTS = Path(__file__).parent / "results" / "load.json"
TARGETS = {"daemon_cpu_percent_of_core": 25.0, "e2e_p99_ms": 50.0, "dropped_frames": 0}


def report(figures: dict[str, object], run: _rig.Run) -> None:
    f = figures
    line_rate = f["line_rate_bytes_per_s"]
    rows = [
        (
            "readers",
            f"{f['readers_r2000']} R2000 + {f['readers_thingmagic']} ThingMagic",
            f"{f['field_tags_per_reader']} tags each, {f['baudrate']} baud 8N1",
        ),
        (
            "bytes/s per reader, mean / min",
            f"{f['bytes_per_s_per_reader_mean']:,} / {f['bytes_per_s_per_reader_min']:,}",
            f"ceiling: line rate {line_rate:,.0f} B/s",
        ),
        ("frames/s, all readers", f"{f['frames_per_s']:,}", f"over a {f['window_s']} s window"),
        (
            "daemon CPU, share of one core",
            f"{f['daemon_cpu_percent_of_core']} %",
            f"target < {TARGETS['daemon_cpu_percent_of_core']:.0f} %; readers' process "
            f"{f['readers_process_cpu_pct']} %, bench {f['bench_process_cpu_pct']} %",
        ),
        (
            "daemon RSS ready / start / end",
            f"{f['rss_at_ready_mb']} / {f['rss_start_mb']} / {f['rss_end_mb']} MiB",
            f"peak {f['rss_peak_mb']} MiB, growth {f['rss_growth_mb']:+} MiB, "
            f"VmHWM {f['vm_hwm_mb']} MiB",
        ),
        (
            "beam clear → decision p50 / p99 / max",
            f"{f['e2e_p50_ms']} / {f['e2e_p99_ms']} / {f['e2e_max_ms']} ms",
            f"target p99 <= {TARGETS['e2e_p99_ms']:.0f} ms; includes the beam poll "
            f"({f['poll_ms']} ms)",
        ),
        (
            "  clear→closed / →decided / →received p50",
            f"{f['e2e_close_p50_ms']} / {f['e2e_decide_p50_ms']} / {f['e2e_deliver_p50_ms']} ms",
            f"p99 {f['e2e_close_p99_ms']} / {f['e2e_decide_p99_ms']} / "
            f"{f['e2e_deliver_p99_ms']} ms (the decision's closed_at and decided_at)",
        ),
        (
            "  bare QoS 1 publish p50 / p99",
            f"{f['bare_mqtt_p50_ms']} / {f['bare_mqtt_p99_ms']} ms",
            "peer: the MQTT hop alone, same broker, same moments",
        ),
        (
            "passages driven / decided / passed",
            f"{f['passages_driven']} / {f['passages_decided']} / {f['passages_passed']}",
            f"every {f['passage_period_s']} s, {f['passage_tags']} items; "
            f"{f['passages_complete']} with every item read",
        ),
        (
            "decisions made / received / lost",
            f"{f['decisions_made']} / {f['decisions_received']} / {f['decisions_lost']}",
            f"{f['warmup_decisions']} of them background (warm-up); duplicates {f['duplicates']}",
        ),
        (
            "frames sent / counted by daemon",
            f"{f['frames_sent_by_simulators']:,} / {f['frames_counted_by_daemon']:,}",
            f"dropped {f['dropped_frames']} (target {TARGETS['dropped_frames']})",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<26} {note}")
    print()
    _rig.print_readers(figures)
    _rig.write_results(RESULTS, figures, TARGETS, run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench load", description=__doc__)
    parser.add_argument("--duration-s", type=float, default=300.0)
    parser.add_argument("--r2000", type=int, default=12)
    parser.add_argument("--thingmagic", type=int, default=4)
    parser.add_argument("--field-tags", type=int, default=16, help="background tags per reader")
    parser.add_argument("--passage-tags", type=int, default=20)
    parser.add_argument("--period-s", type=float, default=2.0, help="one passage every …")
    parser.add_argument("--poll-ms", type=int, default=20, help="gate I/O beam poll")
    args = parser.parse_args(argv)
    shape = _rig.Shape(
        r2000=args.r2000,
        thingmagic=args.thingmagic,
        field_tags=args.field_tags,
        passage_tags=args.passage_tags,
        passage_period_s=args.period_s,
        duration_s=args.duration_s,
        sample_every_s=1.0,
        poll_ms=args.poll_ms,
    )
    run = asyncio.run(_rig.run(shape))
    figures = _rig.figures(run)
    report(figures, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
