"""`sentinel bench`: every figure of the README, measured in one run on this machine.

Each part runs in its own throw-away embedded engine (so none inherits another's data or caches),
one after another: the loader against raw COPY, ingest with every model, history, full
recomputation against per-batch cost, alert latency, and detection quality on the labelled stream.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import click

from sentinel.console import console, out
from sentinel.measure import machine
from sentinel.signals import StopSignals

PARTS = ("loader", "ivm", "alerts", "quality")


PART_GRACE_S = 120  # how long a part asked to stop may take to remove its engine before it is killed


def run_part(module: str, args: list[str], *, timeout: float, stop: StopSignals) -> dict:
    """Run one benchmark module with --json; its last stdout line is the figures.

    The part runs in a session of its own, so a Ctrl-C at the terminal reaches this process only;
    a stop request (or the timeout) is passed on to the part as one SIGINT, and it gets
    `PART_GRACE_S` to stop and remove its throw-away engine before it is killed (killing it at once,
    as `subprocess.run` does, left that engine running)."""
    cmd = [sys.executable, "-m", module, *args, "--json"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    asked = killed = None
    while True:
        try:
            stdout, stderr = proc.communicate(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            now = time.monotonic()
            if asked is None and (stop.requested or now - started > timeout):
                proc.send_signal(signal.SIGINT)
                asked = now
            elif asked is not None and killed is None and now - asked > PART_GRACE_S:
                proc.kill()
                killed = now
    took = round(time.monotonic() - started, 1)
    stop.check(f"interrupted: {module} did not stop within {PART_GRACE_S} s and was killed "
               "(its throw-away engine may still run: see `ps -u sentinel`)" if killed else
               f"interrupted: {module} stopped and removed its engine")
    lines = [ln for ln in stdout.splitlines() if ln.strip().startswith("{")]
    if proc.returncode != 0 or not lines:
        detail = (stderr.strip().splitlines() or ["no output"])[-1]
        if asked is not None:
            detail = f"timed out after {timeout:.0f} s ({detail})"
        return {"error": f"{' '.join(cmd[2:])} failed ({proc.returncode}): {detail}", "seconds": took}
    figures = json.loads(lines[-1])
    figures["seconds"] = took
    figures["command"] = " ".join(["python", "-m", module, *args])
    return figures


def loader_part(*, rows: int, stop: StopSignals) -> dict:
    """The loader against raw COPY, on a throw-away engine with sql/ applied and no models."""
    from sentinel.stack import temporary_stack

    with temporary_stack(models=False, stop=stop) as stack:
        figures = run_part("loader.bench", ["--dsn", stack.owner_dsn, "--count", str(rows), "--repeat", "3",
                                            "--rss-count", str(rows * 2)], timeout=3600, stop=stop)
        figures["command"] = figures.get("command", "").replace(stack.owner_dsn, "<owner DSN>")
    return figures


def quality(*, rows: int, seed: int, stop: StopSignals) -> dict:
    """Precision per rule and recall per injected pattern on an unpaced labelled stream."""
    from loader.generator import GeneratorConfig, generate
    from loader.load import load
    from loader.writer import Writer
    from sentinel import quality as q
    from sentinel.stack import temporary_stack

    with temporary_stack(stop=stop) as stack:
        started = time.monotonic()
        summary = load(generate(GeneratorConfig(seed=seed, count=rows)), Writer(stack.loader_dsn), stop=stop)
        took = time.monotonic() - started
        stop.check("interrupted: the quality part stopped and removed its engine")
        rules, patterns = q.measure(stack.owner_dsn)
    return {
        "rows": summary.loaded,
        "rows_per_s": round(summary.loaded / took, 1) if took else None,
        "rules": {r.rule: {"flagged": r.flagged, "true_positives": r.true_positives,
                           "precision": None if r.precision is None else round(r.precision, 3)} for r in rules},
        "patterns": {p.pattern: {"labelled": p.labelled, "detected": p.detected_by_any,
                                 "detected_by_same_rule": p.detected_by_same_rule,
                                 "recall": None if p.recall is None else round(p.recall, 3)} for p in patterns},
    }


def _flat(prefix: str, value, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), inner, rows)
    elif isinstance(value, list):
        rows.append((prefix, ", ".join(str(v) for v in value)))
    elif isinstance(value, float):
        rows.append((prefix, f"{value:,.3f}".rstrip("0").rstrip(".")))
    elif isinstance(value, int) and not isinstance(value, bool):
        rows.append((prefix, f"{value:,}"))
    else:
        rows.append((prefix, str(value)))


@click.command()
@click.option("--only", type=click.Choice(PARTS), multiple=True, help="Run only these parts (repeatable).")
@click.option("--loader-rows", type=click.IntRange(min=1000), default=300_000, show_default=True,
              help="Rows per loader run (raw COPY and loader, no models).")
@click.option("--ingest-rows", type=click.IntRange(min=1000), default=200_000, show_default=True,
              help="Rows per timed ingest with every model deployed.")
@click.option("--history-rows", type=click.IntRange(min=0), default=1_000_000, show_default=True,
              help="Rows of history loaded before the second timed ingest.")
@click.option("--alert-rate", type=click.FloatRange(min=1), default=5000.0, show_default=True,
              help="Offered rate (txn/s) while measuring alert latency.")
@click.option("--alert-seconds", type=click.FloatRange(min=2), default=30.0, show_default=True,
              help="How long the alert-latency run writes.")
@click.option("--quality-rows", type=click.IntRange(min=1000), default=200_000, show_default=True,
              help="Labelled rows for precision/recall.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print all figures as one JSON object on stdout.")
def bench(only: tuple[str, ...], loader_rows: int, ingest_rows: int, history_rows: int, alert_rate: float,
          alert_seconds: float, quality_rows: int, seed: int, as_json: bool) -> None:
    """Measure throughput, history, recompute cost, alert latency and detection quality; print a table."""
    parts = only or PARTS
    figures: dict = {"machine": machine()}
    # Ctrl-C and SIGTERM only ask the run to stop: the part under way stops and removes its
    # throw-away engine first; a second signal exits at once (that part still removes its engine).
    with StopSignals(first="stopping: the part under way removes its engine first (Ctrl-C again to exit at once)",
                     again="error: interrupted again: exited at once (the part under way goes on removing its "
                           "engine)") as stop:
        plan = {
            "loader": lambda: loader_part(rows=loader_rows, stop=stop),
            "ivm": lambda: run_part("sentinel.bench_ivm", ["--rows", str(ingest_rows), "--history", str(history_rows),
                                                          "--batch", str(max(100, min(10000, ingest_rows // 10)))],
                                    timeout=7200, stop=stop),
            "alerts": lambda: run_part("alerts.bench", ["--rate", str(alert_rate), "--seconds", str(alert_seconds),
                                                        "--warmup", str(min(5.0, alert_seconds / 3))], timeout=3600,
                                       stop=stop),
            "quality": lambda: quality(rows=quality_rows, seed=seed, stop=stop),
        }
        for part in parts:
            stop.check()
            console.print(f"bench: {part}…")
            started = time.monotonic()
            figures[part] = plan[part]()
            if "seconds" not in figures[part]:
                figures[part]["seconds"] = round(time.monotonic() - started, 1)
    if as_json:
        out.print(json.dumps(figures, default=str))
        return
    from rich.table import Table

    table = Table(title="sentinel bench", show_edge=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = []
    _flat("", figures, rows)
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    failed = [p for p in parts if isinstance(figures.get(p), dict) and "error" in figures[p]]
    if failed:
        raise click.ClickException("; ".join(figures[p]["error"] for p in failed))
