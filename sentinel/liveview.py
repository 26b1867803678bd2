"""The demo's live terminal view: throughput, flags by rule, latest alerts, alert latency."""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

from rich.console import Group
from rich.table import Table
from rich.text import Text

from sentinel.measure import percentile


@dataclass
class DemoState:
    """What the view shows, fed by the loader's stats and by an alert sink; thread-safe."""

    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    sent_rate: float = 0.0
    alerts: int = 0
    retractions: int = 0
    by_rule: Counter = field(default_factory=Counter)
    latest: deque = field(default_factory=lambda: deque(maxlen=8))
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=2000))
    _recent: deque = field(default_factory=lambda: deque(maxlen=5000))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_alert(self, alert: dict) -> None:
        """Record one delivered alert (or retraction) and its end-to-end latency."""
        now = time.time()
        with self.lock:
            if alert.get("op", "+") == "-":
                self.retractions += 1
                return
            self.alerts += 1
            self.by_rule[alert["rule"]] += 1
            self.latest.appendleft(alert)
            self._recent.append((time.monotonic(), alert["rule"]))
            flagged = alert.get("flagged_at")  # clock time the flag was written, in the inserting transaction
            if flagged:
                if isinstance(flagged, str):
                    flagged = datetime.fromisoformat(flagged)
                if flagged.tzinfo is None:
                    flagged = flagged.replace(tzinfo=timezone.utc)
                self.latencies_ms.append(max(0.0, (now - flagged.timestamp()) * 1000))

    def flagged_per_second(self, window_s: float = 10.0) -> Counter:
        """Flags per second by rule over the last `window_s` seconds."""
        cutoff = time.monotonic() - window_s
        with self.lock:
            recent = Counter(rule for ts, rule in self._recent if ts >= cutoff)
        span = min(window_s, max(1.0, time.monotonic() - self.started))
        return Counter({rule: n / span for rule, n in recent.items()})

    def render(self) -> Group:
        """The whole view as rich renderables."""
        with self.lock:
            lat = list(self.latencies_ms)
            latest = list(self.latest)
            by_rule = Counter(self.by_rule)
        rates = self.flagged_per_second()
        head = Text.assemble(
            ("Sentinel — live fraud   ", "bold"),
            (f"{self.sent_rate:,.0f} txn/s", "cyan"), f"   {self.sent:,} sent   ",
            (f"{self.alerts:,} alerts", "bold red"), f"   {self.retractions:,} retracted   ",
            "flag→alert p50 ", (_ms(percentile(lat, 50)), "green"),
            "  p99 ", (_ms(percentile(lat, 99)), "green"),
        )
        rules = Table(title="flags by rule", expand=False, show_edge=False)
        rules.add_column("rule")
        rules.add_column("total", justify="right")
        rules.add_column("per s (10 s)", justify="right")
        for rule, total in sorted(by_rule.items(), key=lambda kv: -kv[1]):
            rules.add_row(rule, f"{total:,}", f"{rates.get(rule, 0.0):.2f}")
        recent = Table(title="latest alerts", expand=True, show_edge=False)
        for col in ("event time", "card", "rule", "risk", "amount", "reason"):
            recent.add_column(col, overflow="fold")
        for a in latest:
            recent.add_row(str(a.get("event_time", ""))[11:23], str(a.get("card_id", "")), str(a.get("rule", "")),
                           str(a.get("risk_level", "")), str(a.get("amount", "")), str(a.get("reason", "")))
        return Group(head, Text(""), rules, Text(""), recent)

    def summary_line(self) -> str:
        """One plain line for non-interactive output."""
        with self.lock:  # the sink's thread adds rules to by_rule while this one reads it
            lat = list(self.latencies_ms)
            by_rule = self.by_rule.most_common()
        return (f"{self.sent:,} sent ({self.sent_rate:,.0f}/s), {self.alerts:,} alerts "
                f"({', '.join(f'{r} {n}' for r, n in by_rule)}), "
                f"latency p50 {_ms(percentile(lat, 50))} p99 {_ms(percentile(lat, 99))}")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms"
