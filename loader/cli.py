"""`sentinel load`: stream synthetic transactions, or replay a file, into the engine."""

from __future__ import annotations

if __name__ == "__main__":  # `python -m loader.cli`: a Ctrl-C while the modules below load (see sentinel.__main__)
    from sentinel.__main__ import quiet_interrupts_while_loading

    quiet_interrupts_while_loading()

import json
import logging
import random
import sys
from datetime import datetime, timezone
from itertools import chain, islice
from pathlib import Path

import click

from loader.generator import DEFAULT_SHARES, SCENARIOS, Generator, GeneratorConfig
from loader.load import LoadSummary, Progress, StopSignals, load as run_load
from loader.replay import Rejects, ReplayError, parse_map, replay
from loader.schema import FRAUD_PATTERNS, RowError, parse_time
from loader.writer import Writers, WriterError

from sentinel.config import Settings, resolve_dsn
from sentinel.console import LogLines, console
from sentinel.errors import SentinelError


class LoadError(SentinelError):
    """A load that cannot start or continue; the CLI prints its message as one line."""


def parse_shares(items: tuple[str, ...], fraud_share: float | None) -> dict[str, float]:
    shares = dict(DEFAULT_SHARES)
    if fraud_share is not None:
        total = sum(shares[k] for k in FRAUD_PATTERNS)
        for k in FRAUD_PATTERNS:
            shares[k] = shares[k] / total * fraud_share
    for item in items:
        for part in item.split(","):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in SCENARIOS:
                raise click.BadParameter(f"expected SCENARIO=FRACTION with SCENARIO one of {', '.join(SCENARIOS)}; got {part!r}",
                                         param_hint="--share")
            try:
                shares[name] = float(value)
            except ValueError:
                raise click.BadParameter(f"{value!r} is not a number", param_hint="--share") from None
    return shares


def _summary_line(s: LoadSummary) -> str:
    dup = "n/a" if s.duplicates is None else f"{s.duplicates:,}"
    head = "interrupted: " if s.interrupted else ""
    return (f"{head}loaded {s.loaded:,} · rejected {s.rejected:,} · duplicates {dup} · "
            f"{s.read:,} read in {s.elapsed_s:.1f} s ({s.rows_per_s:,.0f} rows/s)")


@click.command("load")
@click.option("--from", "source", type=click.Path(dir_okay=False, path_type=Path),
              help="Replay a CSV or NDJSON file (optionally .gz) instead of generating.")
@click.option("--count", type=click.IntRange(min=0), help="Stop after N rows.")
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after S seconds.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True),
              help="Pace at N rows/s (event time follows the wall clock); unlimited when absent.")
@click.option("--speedup", type=click.FloatRange(min=0, min_open=True),
              help="Replay at N× the file's own event-time pace.")
@click.option("--seed", type=int, help="Generator seed; the same seed gives the same stream (and txn_ids).")
@click.option("--share", "shares", multiple=True, metavar="SCENARIO=FRACTION",
              help=f"Share of transactions per scenario ({', '.join(SCENARIOS)}).")
@click.option("--fraud-share", type=click.FloatRange(0, 0.5), help="Total share of fraud, split as the defaults.")
@click.option("--late-share", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fraction of events delivered out of order.")
@click.option("--max-delay", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Largest delivery delay of a late event, seconds.")
@click.option("--start", help="Event time of the first synthetic row (ISO 8601 or 'now'); unpaced default 2025-01-06.")
@click.option("--sim-rate", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Unpaced: events per simulated second (sets the simulated clock).")
@click.option("--cards", type=click.IntRange(min=100), help="Card pool size (default scales with the rate).")
@click.option("--map", "maps", multiple=True, metavar="COLUMN=FIELD",
              help="Replay: take COLUMN from the file's FIELD (repeat or comma-separate).")
@click.option("--format", "fmt", type=click.Choice(["csv", "ndjson"]), help="Replay file format (default: by name).")
@click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path),
              help="Where rejected rows go (NDJSON: line, reason, raw) [default: FILE.rejects.ndjson].")
@click.option("--batch-rows", type=click.IntRange(min=1), default=10000, show_default=True,
              help="A batch leaves after this many rows...")
@click.option("--batch-ms", type=click.FloatRange(min=1), default=200.0, show_default=True,
              help="...or this many milliseconds, whichever first.")
@click.option("--writers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Connections writing in parallel, each card's rows on one of them (so their "
                   "transactions maintain disjoint cards side by side).")
@click.option("--mode", type=click.Choice(["auto", "copy", "insert"]), default="auto", show_default=True,
              help="COPY, or multi-row INSERT (auto: INSERT on RisingWave, which has no COPY FROM).")
@click.option("--dsn", help="Database to load into [default: the engine's loader DSN, or $SENTINEL_DSN].")
@click.option("--quiet", "-q", is_flag=True, help="No progress line or summary (errors still shown).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.pass_context
def load(
    ctx: click.Context,
    source: Path | None,
    count: int | None,
    duration: float | None,
    rate: float | None,
    speedup: float | None,
    seed: int | None,
    shares: tuple[str, ...],
    fraud_share: float | None,
    late_share: float,
    max_delay: float,
    start: str | None,
    sim_rate: float,
    cards: int | None,
    maps: tuple[str, ...],
    fmt: str | None,
    rejects: Path | None,
    batch_rows: int,
    batch_ms: float,
    writers: int,
    mode: str,
    dsn: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Stream labelled synthetic transactions (or replay a file) into fraud.transactions."""
    if rate is not None and speedup is not None:
        raise click.UsageError("--rate and --speedup are exclusive")
    if speedup is not None and source is None:
        raise click.UsageError("--speedup replays a file's own pace; use it with --from")
    dsn = resolve_dsn("loader", settings=ctx.find_object(Settings), dsn=dsn)

    # Ctrl-C, and SIGTERM from `docker stop` or systemd, from here on only ask the load to stop: it
    # sends what it read and exits 130, whatever the main thread was doing (`StopSignals`).
    with StopSignals() as stop:
        extra: dict = {}
        rejects_sink: Rejects | None = None
        generator: Generator | None = None
        try:
            if source is not None:
                rejects_path = rejects or source.with_name(source.name + ".rejects.ndjson")
                rejects_sink = Rejects(rejects_path)
                rows = replay(source, mapping=parse_map(maps), fmt=fmt, rejects=rejects_sink)
                first = next(rows, None)  # surfaces header problems before connecting
                extra.update(source=str(source), rejects_file=str(rejects_path))
                rows = chain(() if first is None else (first,), rows)
                if count is not None:
                    rows = islice(rows, count)
            else:
                if seed is None:
                    seed = random.SystemRandom().randrange(2**31)
                start_at = None
                if start:
                    start_at = datetime.now(timezone.utc) if start == "now" else parse_time(start)
                config = GeneratorConfig(
                    seed=seed, count=count, rate=rate, sim_rate=sim_rate, start=start_at,
                    shares=parse_shares(shares, fraud_share), late_share=late_share,
                    max_delay_s=max_delay, cards=cards,
                )
                generator = Generator(config)  # checks the config before connecting
                extra.update(source="generator", seed=seed)
        except (ReplayError, RowError, ValueError) as exc:
            raise LoadError(str(exc)) from None

        # The sender thread waits on the socket many times per batch and must get the GIL back from
        # the generating thread each time: a shorter switch interval than the default 5 ms keeps
        # the COPY flowing (measured: about +10 % rows/s).
        sys.setswitchinterval(0.0005)
        handler = LogLines()
        logger = logging.getLogger("sentinel.loader")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        live = None
        try:
            try:
                writer = Writers(
                    dsn, count=writers, batch_rows=batch_rows, batch_ms=batch_ms, mode=mode,
                    on_reject=(lambda row, reason: rejects_sink.add(None, reason, list(row))) if rejects_sink else None,
                )
            except WriterError as exc:
                raise LoadError(str(exc)) from None
            if generator is not None:
                # Lists of rows, normal purchases as their COPY line (`generate_batches`), unless the
                # writer sends INSERTs (RisingWave): it would only parse the lines back into tuples.
                rows = generator.batches(copy_lines=writer.mode == "copy")
            progress = None
            if not quiet and console.is_terminal:
                from rich.live import Live
                from rich.text import Text

                live = Live(Text("starting…"), console=console, refresh_per_second=4, transient=True)
                live.start()

                def progress(p: Progress) -> None:
                    lag = f" · lag {p.lag_s:.1f} s" if rate or speedup else ""
                    live.update(Text(f"{p.read:,} rows · {p.rate:,.0f} rows/s · rejected {p.rejected:,}{lag}"))

            try:
                summary = run_load(rows, writer, rate=rate, speedup=speedup, duration_s=duration,
                                   rejects=rejects_sink, progress=progress, batched=generator is not None,
                                   stop=stop)
            except WriterError as exc:
                raise LoadError(f"{exc}; rows already sent are in the database") from None
            except (ReplayError, ValueError) as exc:
                raise LoadError(str(exc)) from None
        finally:
            if live is not None:
                live.stop()
            logger.removeHandler(handler)
            if rejects_sink is not None:
                rejects_sink.close()

    summary.extra = extra
    if as_json:
        click.echo(json.dumps(summary.as_dict(), default=str))
    if not quiet:
        console.print(_summary_line(summary), markup=False)
        if rejects_sink is not None and rejects_sink.count:
            console.print(f"rejected rows: {rejects_sink.path}", markup=False)
    if summary.interrupted:
        sys.exit(130)


def main() -> None:
    """`python -m loader.cli`: the load command on its own (one-line errors, exit codes)."""
    from sentinel.cli import main as sentinel_main

    sentinel_main(["load", *sys.argv[1:]])


if __name__ == "__main__":
    main()
