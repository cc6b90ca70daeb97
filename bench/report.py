"""The one benchmark and reliability report, built from what the benchmarks wrote.

Owns turning ``bench/results/NAME.json`` (each benchmark's own figures, every one measured
beside its ceiling or peer in the same run) into one table of rows — what is measured, our
figure, the ceiling, their ratio, the target where the issues set one and whether it is met —
written to ``bench/results.json`` and rendered as ``docs/benchmarks.md``.

Invariants:
- nothing here measures anything: every figure is read from a result file, and a benchmark
  that did not run shows as "not measured", never as a stale or invented number;
- ``ratio`` is always ours ÷ ceiling: below 1 for a rate means slower than the ceiling, above
  1 for a latency means slower than the ceiling;
- the report says when and on what each benchmark ran (its result file's time and meta).

Run: ``python -m bench report`` (also the last step of ``python -m bench``).
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

HERE = Path(__file__).parent
RESULTS_DIR = HERE / "results"
REPORT_JSON = HERE / "results.json"
REPORT_MD = HERE.parent / "docs" / "benchmarks.md"
SOAK_PNG = "benchmarks-soak.png"

Json = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Row:
    section: str
    what: str
    ours: float | None
    unit: str
    ceiling: float | None = None
    ceiling_what: str = ""
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.ceiling:
            return None
        return self.ours / self.ceiling


def _num(data: Json, *path: str) -> float | None:
    value: object = data
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


# -- one extractor per benchmark ---------------------------------------------------------------


def codecs_rows(data: Json) -> Iterator[Row]:
    for row in cast(list[Json], data.get("rows", [])):
        bench, protocol = str(row["bench"]), str(row["protocol"])
        if bench == "codec, 64-B chunks" or bench.startswith("pty"):
            what = (
                f"{protocol} decode, 64-byte chunks"
                if bench.startswith("codec")
                else f"{protocol} pty bytes → session observations"
            )
            yield Row(
                "Readers",
                what,
                _num(row, "per_s"),
                "frames/s",
                _num(row, "line_rate_per_s"),
                "115200-baud line rate",
            )


def whitelist_rows(data: Json) -> Iterator[Row]:
    f = cast(Json, data.get("figures", {}))
    items = _num(f, "items") or 0
    scale = f"{items / 1e6:.3g}M items"
    lookup_p99 = _num(f, "lookup_p99_ms")
    yield Row(
        "Whitelist",
        f"import of a {scale} snapshot",
        _num(f, "import_records_per_s"),
        "records/s",
    )
    yield Row(
        "Whitelist",
        f"lookup, 1,000 random tags at {scale}, p50",
        _num(f, "lookup_p50_ms"),
        "ms",
        _num(f, "bare_in_p50_ms"),
        "bare SQLite IN, same keys",
    )
    yield Row(
        "Whitelist",
        f"lookup, 1,000 random tags at {scale}, p99",
        lookup_p99,
        "ms",
        _num(f, "bare_in_p99_ms"),
        "bare SQLite IN, same keys",
        "≤ 5 ms",
        _at_most(lookup_p99, 5.0),
    )
    yield Row(
        "Whitelist",
        "fixed pure-Python work timed beside those lookups, p99 (the VM's jitter)",
        _num(f, "fixed_work_p99_ms"),
        "ms",
        _num(f, "fixed_work_p50_ms"),
        "its own p50",
    )
    yield Row(
        "Whitelist",
        f"lookup, 5 pallets (1,000 tags) at {scale}, p99",
        _num(f, "lookup_p99_ms_pallets"),
        "ms",
        _num(f, "bare_in_p99_ms_pallets"),
        "bare SQLite IN, same keys",
    )
    yield Row(
        "Whitelist",
        "decision p99 while a 10,000-record delta applies",
        _num(f, "decision_p99_ms_during_delta"),
        "ms",
        _num(f, "decision_p99_ms_without_delta"),
        "the same without a delta",
    )
    yield Row(
        "Whitelist",
        "decision p99 while the item index is rebuilt after a delta",
        _num(f, "decision_p99_ms_during_rebuild"),
        "ms",
        _num(f, "decision_p99_ms_without_delta"),
        "the same without a delta",
    )
    startup = _num(f, "startup_to_ready_s")
    yield Row(
        "Daemon",
        f"process start → ready, {scale} store",
        startup,
        "s",
        _num(f, "python_import_s"),
        "python importing edgegate.app",
        "≤ 1 s",
        _at_most(startup, 1.0),
    )
    rss = _num(f, "daemon_rss_mb")
    yield Row(
        "Daemon",
        f"RSS idle, {scale} store",
        rss,
        "MiB",
        target="≤ 150 MiB",
        met=_at_most(rss, 150.0),
    )


def decide_rows(data: Json) -> Iterator[Row]:
    items = _num(data, "items") or 0
    scale = f"{items / 1e6:.3g}M items"
    sizes = cast(Json, data.get("sizes", {}))
    for size in sorted(sizes, key=int):
        f = cast(Json, sizes[size])
        ceiling = _num(f, "ceiling_p99_ms")
        for stat in ("p50", "p99"):
            ours = _num(f, f"coil_{stat}_ms")
            target, met = "", None
            if size == "1000" and stat == "p99":
                target, met = "≤ 10 ms", _at_most(ours, 10.0)
            yield Row(
                "Decisions",
                f"close → decision durable + barrier coil, {size} tags at {scale}, {stat}",
                ours,
                "ms",
                _num(f, f"ceiling_{stat}_ms") if stat == "p50" else ceiling,
                "bare SQLite IN + one FULL commit",
                target,
                met,
            )
        yield Row(
            "Decisions",
            f"close → decision at an MQTT subscriber, {size} tags, p99",
            _num(f, "subscriber_p99_ms"),
            "ms",
            ceiling,
            "bare SQLite IN + one FULL commit",
        )


def outbox_rows(data: Json) -> Iterator[Row]:
    for row in cast(list[Json], data.get("rows", [])):
        bench = str(row.get("bench", ""))
        what = f"{bench}: {row.get('what', '')}"
        ours, ceiling = _num(row, "per_s"), _num(row, "ceiling_per_s")
        target, met = "", None
        if bench == "end to end":
            target = "≥ 50 % of ceiling"
            met = None if ours is None or not ceiling else ours / ceiling >= 0.5
        yield Row(
            "Outbox", what, ours, "events/s", ceiling, str(row.get("ceiling", "")), target, met
        )


def load_rows(data: Json) -> Iterator[Row]:
    f = cast(Json, data.get("figures", {}))
    cpu = _num(f, "daemon_cpu_percent_of_core")
    readers = _num(f, "readers") or 16
    duration = _num(f, "duration_s") or 0
    label = f"{readers:g} readers at line rate, {duration:g} s"
    yield Row(
        "Load",
        f"daemon CPU, {label}",
        cpu,
        "% of a core",
        target="< 25 %",
        met=None if cpu is None else cpu < 25.0,
    )
    yield Row(
        "Load",
        "observations decoded by the daemon",
        _num(f, "frames_counted_by_daemon"),
        "frames",
        _num(f, "frames_sent_by_simulators"),
        "frames sent by the simulators",
        "all, none dropped",
        _equal(_num(f, "frames_counted_by_daemon"), _num(f, "frames_sent_by_simulators")),
    )
    yield Row(
        "Load",
        "bytes/s per reader, mean",
        _num(f, "bytes_per_s_per_reader_mean"),
        "B/s",
        _num(f, "line_rate_bytes_per_s"),
        "115200-baud line rate",
    )
    yield Row("Load", "RSS growth under load", _num(f, "rss_growth_mb"), "MiB")
    yield Row("Load", "RSS under load, peak", _num(f, "rss_peak_mb"), "MiB")
    for stat in ("p50", "p99"):
        ours = _num(f, f"e2e_{stat}_ms")
        yield Row(
            "Load",
            f"end to end, beam clear → decision at a subscriber, under load, {stat}",
            ours,
            "ms",
            _num(f, f"bare_mqtt_{stat}_ms"),
            "a bare MQTT publish, same broker",
            "≤ 50 ms" if stat == "p99" else "",
            _at_most(ours, 50.0) if stat == "p99" else None,
        )
    yield _lost_row("Load", f)


def soak_rows(data: Json) -> Iterator[Row]:
    f = cast(Json, data.get("figures", {}))
    factor = _num(f, "load_factor") or 10
    duration = _num(f, "duration_s") or 0
    label = f"{factor:g}× a busy gate, {duration:.0f} s"
    yield Row(
        "Soak",
        f"beam clear → decision at a subscriber, {label}, p99",
        _num(f, "e2e_p99_ms"),
        "ms",
        _num(f, "bare_mqtt_p99_ms"),
        "a bare MQTT publish, same broker",
    )
    yield Row(
        "Soak",
        f"daemon CPU, {label}",
        _num(f, "daemon_cpu_percent_of_core"),
        "% of a core",
    )
    yield Row(
        "Soak",
        "RSS, last sample",
        _num(f, "rss_last_mb"),
        "MiB",
        _num(f, "rss_first_mb"),
        "first sample",
    )
    yield Row("Soak", "RSS slope", _num(f, "rss_slope_mb_per_hour"), "MiB/hour")
    yield _lost_row("Soak", f)


def reliability_rows(data: Json) -> Iterator[Row]:
    for row in cast(list[Json], data.get("rows", [])):
        lost = _num(row, "lost")
        yield Row(
            "Reliability",
            f"{row.get('fault', row.get('name', '?'))}: lost",
            lost,
            "decisions",
            _num(row, "tried"),
            "tried",
            "0",
            None if lost is None else lost == 0,
        )


def _lost_row(section: str, f: Json) -> Row:
    lost = _num(f, "decisions_lost")
    return Row(
        section,
        "decisions lost",
        lost,
        "",
        _num(f, "decisions_made"),
        "decisions made",
        "0",
        None if lost is None else lost == 0,
    )


def _equal(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a == b


EXTRACTORS: Mapping[str, Callable[[Json], Iterator[Row]]] = {
    "codecs": codecs_rows,
    "whitelist": whitelist_rows,
    "decide": decide_rows,
    "outbox": outbox_rows,
    "load": load_rows,
    "soak": soak_rows,
    "reliability": reliability_rows,
}


# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    measured_at: str | None
    data: Json | None


def read_sources() -> list[Source]:
    sources = []
    for name in EXTRACTORS:
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists():
            sources.append(Source(name, None, None))
            continue
        data = cast(Json, json.loads(path.read_text()))
        # Recorded by the benchmark: a file's modification time is that of its checkout.
        stamp = data.get("measured_at")
        sources.append(Source(name, stamp if isinstance(stamp, str) else "not recorded", data))
    return sources


def build_rows(sources: list[Source]) -> list[Row]:
    rows: list[Row] = []
    for source in sources:
        if source.data is None:
            rows.append(Row(source.name, "not measured (no result file)", None, ""))
            continue
        rows.extend(EXTRACTORS[source.name](source.data))
    return rows


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"  # counts
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: ""}[met]


def print_table(rows: list[Row]) -> None:
    width = max(len(r.what) for r in rows)
    print(f"{'':12} {'measured':<{width}} {'ours':>10} {'ceiling':>10} {'ratio':>7}  target")
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        target = f"{r.target} {verdict(r.met)}".strip()
        print(
            f"{r.section:12} {r.what:<{width}} {fmt(r.ours):>10} {fmt(r.ceiling):>10} "
            f"{ratio:>7}  {target}"
        )


def markdown(rows: list[Row], sources: list[Source], extra: Mapping[str, Json]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench report` from `bench/results/*.json` — do not edit by hand;",
        "`python -m bench` measures everything again (about 25 minutes on 2 cores) and rewrites",
        "this page.",
        "Every figure is measured beside its ceiling or peer in the same run; *ratio* is ours ÷",
        "ceiling (below 1 for a rate = slower than the ceiling; above 1 for a latency = slower).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" SQLite {sqlite3.sqlite_version}. The machine is a shared VM: figures are noisy.",
        "",
        "| measured | ours | unit | ceiling / peer | ratio | target |",
        "|---|---:|---|---|---:|---|",
    ]
    section = ""
    for r in rows:
        if r.section != section:
            section = r.section
            lines.append(f"| **{section}** | | | | | |")
        ceiling = f"{fmt(r.ceiling)} ({r.ceiling_what})" if r.ceiling is not None else "—"
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        target = f"{r.target} **{verdict(r.met)}**" if r.met is not None else r.target
        lines.append(f"| {r.what} | {fmt(r.ours)} | {r.unit} | {ceiling} | {ratio} | {target} |")
    missed = [r for r in rows if r.met is False]
    lines += ["", "## Targets", ""]
    if missed:
        lines.append("Missed in this report:")
        lines += [
            f"- {r.section}: {r.what} — {fmt(r.ours)} {r.unit}, target {r.target}" for r in missed
        ]
    else:
        lines.append("Every target with a figure in this report is met.")
    lines += [
        "",
        "Where the time goes on the paths behind these figures, what was measured and changed,",
        "and what was tried and rejected: docs/architecture.md (*Where the 1,000-random-tag",
        "lookup stops*, *Decision path*, the outbox and observation-path sections).",
    ]
    reliability = extra.get("reliability")
    if reliability is not None:
        lines += ["", "## Reliability campaign", ""]
        lines += reliability_table(reliability)
    soak = extra.get("soak")
    if soak is not None:
        lines += ["", "## Soak", "", f"![RSS and decision latency over the soak]({SOAK_PNG})", ""]
        summary = soak.get("summary")
        if isinstance(summary, str):
            lines.append(summary)
    lines += ["", "## Sources", "", "| benchmark | measured | reproduce |", "|---|---|---|"]
    for source in sources:
        when = source.measured_at or "not run"
        lines.append(f"| {source.name} | {when} | `python -m bench {source.name}` |")
    return "\n".join(lines) + "\n"


RELIABILITY_COLUMNS = ("tried", "survived", "rejected", "lost", "duplicates", "decided", "received")


def reliability_table(data: Json) -> list[str]:
    rows = cast(list[Json], data.get("rows", []))
    if not rows:
        return ["(no rows)"]
    lines = [
        "| fault | " + " | ".join(RELIABILITY_COLUMNS) + " | outcome |",
        "|---|" + "---:|" * len(RELIABILITY_COLUMNS) + "---|",
    ]
    for row in rows:
        name = str(row.get("fault", row.get("name", "?")))
        cells = ["—" if row.get(k) is None else str(row.get(k)) for k in RELIABILITY_COLUMNS]
        outcome = "ok" if row.get("ok") else f"**FAILED** {row.get('error') or ''}".strip()
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {outcome} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    sources = read_sources()
    rows = build_rows(sources)
    print_table(rows)
    extra = {
        s.name: s.data for s in sources if s.data is not None and s.name in ("soak", "reliability")
    }
    REPORT_JSON.write_text(
        json.dumps(
            {
                "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "machine": {
                    "machine": platform.machine(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "sqlite": sqlite3.sqlite_version,
                },
                "sources": {s.name: s.measured_at for s in sources},
                "rows": [asdict(r) | {"ratio": r.ratio} for r in rows],
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    REPORT_MD.write_text(markdown(rows, sources, extra))
    print(f"wrote {REPORT_JSON} and {REPORT_MD}")
    missed = sum(1 for r in rows if r.met is False)
    print(f"targets missed: {missed}" if missed else "every measured target met")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
