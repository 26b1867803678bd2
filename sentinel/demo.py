"""`sentinel demo`: the whole pipeline live — engine, models, a paced synthetic stream, alerts."""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from alerts.sinks import Sink
from sentinel.config import Settings
from sentinel.console import console, is_interactive
from sentinel.liveview import DemoState

if TYPE_CHECKING:
    from loader.load import StopSignals
    from sentinel.stack import Stack

CONNECT_HELP = """\
[bold]From another terminal[/] (source .venv/bin/activate first):
  psql "$(sentinel dsn --role analyst)"
    select rule, risk_level, reason from fraud.flagged_transactions order by event_time desc limit 10;
    select * from fraud.flagged_minutely order by minute desc limit 20;
    select * from fraud.card_activity order by txn_count desc limit 10;
  BI tools: host 127.0.0.1, port {port}, database sentinel, user sentinel_analyst,
            password from `sentinel dsn --role analyst`
  Alerts are appended to {alerts}
  Change a rule live: eval "$(sentinel dsn --env)"; cd dbt && dbt run --vars '{{high_value_min_amount: 1000}}'"""


class ViewSink(Sink):
    """An in-process alert sink that feeds the live view (its position is kept like any sink's)."""

    kind = "view"

    def __init__(self, state: DemoState, name: str = "demo-view") -> None:
        super().__init__(name)
        self.state = state

    def deliver(self, alerts: Sequence) -> None:
        for alert in alerts:
            self.state.on_alert(alert.data)


def run_demo(settings: Settings, *, rate: float, duration: float | None, seed: int | None,
             alerts_file: Path | None, ui: bool, fraud_share: float) -> DemoState:
    """Bring the stack up, stream at `rate`, deliver alerts to a file and the view, until Ctrl-C."""
    from loader.load import StopSignals
    from sentinel.stack import bring_up

    # Ctrl-C and SIGTERM, from here to the end, only ask the demo to stop (StopSignals): while it comes
    # up, once the step under way ends (the engine it started is stopped again); while it streams, at
    # the next row; while it stops, the teardown goes on. A second signal exits at once.
    with StopSignals() as stop:
        stack = bring_up(settings, on_step=console.print, stop=stop, stop_started_on_failure=True)
        try:
            state = _stream(stack, settings, stop, rate=rate, duration=duration, seed=seed,
                            alerts_file=alerts_file, ui=ui, fraud_share=fraud_share)
        finally:
            if stack.started and stack.engine is not None:
                stop.again = ("error: interrupted again: exited before the engine stopped "
                              "(`sentinel down` stops it)")
                stack.engine.down()
                console.print(f"engine stopped; data kept in {stack.engine.home} (rerun to continue)")
    console.print(state.summary_line(), markup=False)
    return state


def _stream(stack: Stack, settings: Settings, stop: StopSignals, *, rate: float, duration: float | None,
            seed: int | None, alerts_file: Path | None, ui: bool, fraud_share: float) -> DemoState:
    """The listener, the paced stream and the view, until `duration` or a stop request."""
    from alerts.listener import Listener
    from alerts.sinks import FileSink
    from loader.cli import parse_shares
    from loader.generator import GeneratorConfig, generate
    from loader.load import load
    from loader.writer import Writer

    alerts_path = alerts_file or (settings.home / "alerts.ndjson" if settings.embedded else Path("sentinel-alerts.ndjson"))
    alerts_path.parent.mkdir(parents=True, exist_ok=True)
    port = stack.engine.running_port() if stack.engine else "<your server's port>"
    console.print(CONNECT_HELP.format(port=port, alerts=alerts_path))

    state = DemoState()
    logging.getLogger("sentinel").setLevel(logging.WARNING)
    listener = Listener(stack.owner_dsn, [FileSink(str(alerts_path), name="demo-file"), ViewSink(state)],
                        poll_interval=0.5)
    listener.open()
    listener.start()
    # A new seed per run: ids never collide with an earlier run's, so a rerun continues the stream.
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    rows = generate(GeneratorConfig(seed=seed, rate=rate, shares=parse_shares((), fraud_share)))
    writer = Writer(stack.loader_dsn, batch_rows=max(100, int(rate)), batch_ms=50)
    last_line = time.monotonic()

    def progress(p) -> None:
        nonlocal last_line
        state.sent, state.sent_rate = p.sent, p.rate
        if not ui and time.monotonic() - last_line >= 5:
            last_line = time.monotonic()
            console.print(state.summary_line(), markup=False)

    live = None
    try:
        if ui:
            from rich.live import Live

            live = Live(state.render(), console=console, refresh_per_second=4, get_renderable=state.render)
            live.start()
        summary = load(rows, writer, rate=rate, duration_s=duration, progress=progress, stop=stop)
        state.sent = summary.sent
    finally:
        if live is not None:
            live.stop()
        time.sleep(0.5)  # let the listener deliver the last batch's alerts
        listener.stop()
    return state


@click.command()
@click.option("--rate", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Transactions per second.")
@click.option("--duration", type=click.FloatRange(min=1), help="Stop after this many seconds (default: Ctrl-C).")
@click.option("--seed", type=int, help="Generator seed (default: a new one per run).")
@click.option("--alerts-file", type=click.Path(dir_okay=False, path_type=Path),
              help="NDJSON alert file [default: $SENTINEL_HOME/alerts.ndjson].")
@click.option("--fraud-share", type=click.FloatRange(0, 0.5), default=0.03, show_default=True,
              help="Share of events that start an injected fraud scenario (higher than real life, to see alerts).")
@click.option("--ui/--no-ui", default=None, help="Live terminal view (default: when on a terminal).")
@click.pass_obj
def demo(settings: Settings, rate: float, duration: float | None, seed: int | None, alerts_file: Path | None,
         ui: bool | None, fraud_share: float) -> None:
    """Run everything live: engine, models, synthetic stream, alerts, and a terminal view."""
    run_demo(settings, rate=rate, duration=duration, seed=seed, alerts_file=alerts_file,
             ui=is_interactive() if ui is None else ui, fraud_share=fraud_share)
