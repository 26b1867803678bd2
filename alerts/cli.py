"""`sentinel alerts`: push every newly flagged transaction to the configured sinks, at least once."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable

import click
import psycopg

from alerts.listener import Listener, SinkStats
from alerts.sinks import SINK_USAGE, SinkOptions, SinkSpecError, parse_sink
from alerts.sources import AlertViewMissing, SinkBusy
from sentinel.config import Settings, resolve_dsn
from sentinel.console import LogLines
from sentinel.errors import one_line

EXAMPLES = """
\b
Examples:
  sentinel alerts --sink stdout
  sentinel alerts --sink file:alerts.ndjson --sink webhook:http://localhost:8080/hook
  sentinel alerts --sink ops=webhook:https://hooks.slack.com/services/T0/B0/XX --from-now
  sentinel alerts --sink 'smtp://localhost:25?to=fraud@example.com&digest=1'
"""


def format_stats(stats: SinkStats) -> str:
    """One console line per sink: delivered, position, lag (sequence and seconds), retries."""
    lag = "?" if stats.lag_seq is None else str(stats.lag_seq)
    line = (f"{stats.sink}: delivered {stats.delivered} · position {stats.position} · "
            f"lag {lag} ({stats.lag_seconds:.1f} s) · retries {stats.retries}")
    if stats.failing:
        line += f" · failing: {stats.failing}"
    return line


def _stop_on_signals(stop: threading.Event, logger: logging.Logger) -> tuple[dict, Callable[[], None]]:
    """SIGINT and SIGTERM set `stop`, through a pipe that a thread reads: the handler only writes a
    byte. Had it set the Event itself, it would take the Event's lock, which the main thread holds
    for a moment each time it waits on `stop`: a signal landing then deadlocked the listener (it
    never stopped). (The previous handlers, a function that ends the relay.)"""
    r, w = os.pipe()
    os.set_blocking(w, False)

    def relay() -> None:
        try:
            got = os.read(r, 1)
        finally:
            os.close(r)
        if got:
            logger.info("stopping (%s)", signal.Signals(got[0]).name)
            stop.set()

    def handler(signum: int, _frame: object) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # a stop is already on its way
            os.write(w, bytes([signum]))

    threading.Thread(target=relay, name="alerts-stop", daemon=True).start()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return previous, lambda: os.close(w)  # the relay reads end-of-file and ends


@click.command(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--sink", "sinks", multiple=True, required=True, metavar="SPEC",
              help=f"Where alerts go (repeatable): {SINK_USAGE.removeprefix('expected ')}.")
@click.option("--from-start/--from-now", "from_start", default=True, show_default=True,
              help="Where a sink seen for the first time starts: the whole change log, or new alerts only. "
                   "A known sink always resumes from its stored position.")
@click.option("--dsn", envvar="SENTINEL_DSN", help="Engine to read (owner role) [env SENTINEL_DSN; "
              "default: the embedded engine].")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Most alerts per delivery.")
@click.option("--webhook-timeout", type=click.FloatRange(0.1, 300), default=5.0, show_default=True,
              help="Seconds a webhook may take to answer.")
@click.option("--webhook-format", type=click.Choice(["auto", "json", "slack"]), default="auto",
              show_default=True, help="Body: the alert as JSON, or a Slack-compatible {\"text\": ...} "
              "(auto: slack for hooks.slack.com).")
@click.option("--smtp-from", default="sentinel@localhost", show_default=True,
              help="Sender of alert emails (an smtp sink's ?from= overrides it).")
@click.option("--retry-max-delay", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True,
              help="Longest pause between retries of a failing sink (exponential backoff, jitter).")
@click.option("--stats-interval", type=click.FloatRange(0, 3600), default=10.0, show_default=True,
              help="Seconds between metric lines on the console (0: only at exit).")
@click.pass_context
def alerts(ctx: click.Context, sinks: tuple[str, ...], from_start: bool, dsn: str | None, batch_size: int,
           webhook_timeout: float, webhook_format: str, smtp_from: str, retry_max_delay: float,
           stats_interval: float) -> None:
    """Push every newly flagged transaction to sinks, at least once, resuming where each left off."""
    options = SinkOptions(webhook_timeout=webhook_timeout, webhook_format=webhook_format,
                          smtp_from=smtp_from)
    try:
        built = [parse_sink(spec, options=options) for spec in sinks]
    except SinkSpecError as exc:
        raise click.BadParameter(str(exc), param_hint="--sink") from None
    logger = logging.getLogger("alerts")
    if not any(isinstance(h, LogLines) for h in logger.handlers):
        logger.addHandler(LogLines(clock=True))
    logger.setLevel(logging.INFO)
    logger.propagate = False

    dsn = resolve_dsn("owner", settings=ctx.find_object(Settings), dsn=dsn)
    try:
        listener = Listener(dsn, built, from_now=not from_start, batch_size=batch_size,
                            retry_cap=retry_max_delay)
        for warning in listener.open():
            logger.warning(warning)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sink") from None
    except (AlertViewMissing, SinkBusy) as exc:
        raise click.ClickException(str(exc)) from None
    except psycopg.Error as exc:
        raise click.ClickException(f"cannot reach the engine: {one_line(exc)}") from None

    stop = threading.Event()
    previous, unrelay = _stop_on_signals(stop, logger)
    logger.info("listening on %s engine; sinks: %s", listener.engine, ", ".join(s.name for s in built))

    def log_stats(all_stats: list[SinkStats]) -> None:
        for stats in all_stats:
            logger.info(format_stats(stats))

    try:
        listener.serve(stop, on_stats=log_stats, stats_interval=stats_interval or 3600.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        unrelay()


if __name__ == "__main__":
    import sys

    from sentinel.cli import main

    main(["alerts", *sys.argv[1:]])
