"""Where alerts go: stdout, an NDJSON file, a webhook, an SMTP server. One spec string per sink."""
from __future__ import annotations

import http.client
import json
import logging
import os
import re
import smtplib
import socket
import ssl
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import IO
from urllib.parse import parse_qs, unquote, urlsplit

from alerts.model import Alert

log = logging.getLogger("alerts")

SINK_USAGE = (
    "expected stdout, file:PATH, webhook:http(s)://HOST[:PORT]/PATH or "
    "smtp://HOST:PORT?to=ADDR[,ADDR...][&from=ADDR][&digest=1][&starttls=1], "
    "optionally prefixed by NAME= (the name its position is kept under)"
)
_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.+)$")


class SinkSpecError(ValueError):
    """A --sink value that does not parse; its message is one line for the user."""


class DeliveryError(Exception):
    """A sink could not deliver; `done` alerts at the head of the batch did get through."""

    def __init__(self, message: str, *, done: int = 0) -> None:
        super().__init__(message)
        self.done = done


@dataclass(frozen=True)
class SinkOptions:
    """Options shared by sinks of one listener (from the CLI)."""

    webhook_timeout: float = 5.0
    webhook_format: str = "auto"  # auto | json | slack
    smtp_timeout: float = 10.0
    smtp_from: str = "sentinel@localhost"


class Sink(ABC):
    """Delivers batches of alerts in order; raises DeliveryError and is called again with the rest."""

    kind: str = ""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def deliver(self, alerts: Sequence[Alert]) -> None:
        """Deliver every alert of the batch, or raise DeliveryError saying how many got through."""

    def close(self) -> None:
        """Release connections and files."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class StdoutSink(Sink):
    """JSON lines on standard output, flushed per batch."""

    kind = "stdout"

    def __init__(self, name: str = "stdout", *, stream: IO[str] | None = None) -> None:
        super().__init__(name)
        self._stream = stream

    def deliver(self, alerts: Sequence[Alert]) -> None:
        stream = self._stream or sys.stdout
        try:
            stream.write("".join(alert.line + "\n" for alert in alerts))
            stream.flush()
        except (OSError, ValueError) as exc:
            raise DeliveryError(f"stdout: {exc}") from exc


class FileSink(Sink):
    """NDJSON appended to a file, each batch one write (and optionally fsynced).

    A write cut short (the listener killed mid-batch, a full disk) can leave a last line without
    its newline. Its alerts were not acknowledged, so they are delivered again; before appending,
    the sink cuts that torn tail off, so every line of the file stays one whole JSON document."""

    kind = "file"

    def __init__(self, path: str, name: str | None = None, *, fsync: bool = False) -> None:
        super().__init__(name or f"file:{path}")
        self.path = path
        self.fsync = fsync
        self._fd: int | None = None

    def deliver(self, alerts: Sequence[Alert]) -> None:
        data = "".join(alert.line + "\n" for alert in alerts).encode("utf-8")
        try:
            if self._fd is not None and self._rotated():
                self.close()
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                self._cut_torn_tail(self._fd)
            view = memoryview(data)
            while view:  # one write(2) unless the kernel takes less
                view = view[os.write(self._fd, view):]
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            # what this batch wrote, if anything, is cut off as a torn tail at the next open
            self.close()
            raise DeliveryError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def _cut_torn_tail(self, fd: int) -> None:
        """Truncate the file after its last newline if it does not end with one."""
        size = os.fstat(fd).st_size
        if not size:
            return
        with open(self.path, "rb") as f:
            end = size
            while end > 0:
                start = max(0, end - 65536)
                f.seek(start)
                chunk = f.read(end - start)
                if end == size and chunk.endswith(b"\n"):
                    return
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    end = start + cut + 1
                    break
                end = start
        os.ftruncate(fd, end)
        log.warning("%s: cut a torn last line of %d bytes (an interrupted write; its alerts are "
                    "delivered again)", self.name, size - end)

    def _rotated(self) -> bool:
        """Whether the path now names another file (moved or removed by log rotation)."""
        try:
            return os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
        except OSError:
            return True

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def slack_text(alert: Alert) -> str:
    """One human line per alert, for Slack-compatible webhooks and email subjects."""
    data = alert.data
    amount = data.get("amount")
    amount_text = f"{float(amount):,.2f}" if amount is not None else "?"
    what = "withdrawn" if alert.is_retraction else (data.get("risk_level") or "alert")
    return (f"[{what}] {data.get('rule')}: card {data.get('card_id')}, txn {data.get('txn_id')}, "
            f"amount {amount_text} — {data.get('reason') or ''}").rstrip(" —")


class WebhookSink(Sink):
    """One HTTP POST of JSON per alert over a kept-alive connection; 2xx means delivered."""

    kind = "webhook"

    def __init__(self, url: str, name: str | None = None, *, timeout: float = 5.0,
                 body: str = "auto") -> None:
        super().__init__(name or f"webhook:{url}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SinkSpecError(f"webhook URL must be http(s)://HOST[:PORT]/PATH, got {url!r}")
        if body == "auto":
            body = "slack" if parts.hostname.endswith("hooks.slack.com") else "json"
        if body not in ("json", "slack"):
            raise SinkSpecError(f"webhook body must be json or slack, got {body!r}")
        self.url = url
        self.body = body
        self.timeout = timeout
        self._parts = parts
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            host, port = self._parts.hostname, self._parts.port
            if self._parts.scheme == "https":
                self._conn = http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                                         context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        return self._conn

    def _payload(self, alert: Alert) -> bytes:
        if self.body == "slack":
            return json.dumps({"text": slack_text(alert)}, ensure_ascii=False).encode()
        return alert.line.encode()

    def _post(self, alert: Alert) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "sentinel-alerts",
            "X-Sentinel-Alert-Id": alert.alert_id.encode("ascii", "backslashreplace").decode(),
        }
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=self._payload(alert), headers=headers)
            response = conn.getresponse()
            text = response.read(300)
            response.read()  # drain so the connection can be reused
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            reason = "timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else str(exc) or type(exc).__name__
            raise DeliveryError(f"POST {self.url}: {reason}") from exc
        if response.will_close:
            self.close()
        if not 200 <= response.status < 300:
            body = text.decode("utf-8", "replace").strip().replace("\n", " ")[:120]
            raise DeliveryError(f"POST {self.url}: HTTP {response.status} {response.reason} {body}".rstrip())

    def deliver(self, alerts: Sequence[Alert]) -> None:
        for done, alert in enumerate(alerts):
            try:
                self._post(alert)
            except DeliveryError as exc:
                exc.done = done
                raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class SmtpSink(Sink):
    """Email through an SMTP server: one message per alert, or one digest per batch."""

    kind = "smtp"

    def __init__(self, host: str, port: int, name: str | None = None, *, to: Sequence[str],
                 sender: str = "sentinel@localhost", digest: bool = False, starttls: bool = False,
                 tls: bool = False, username: str | None = None, password: str | None = None,
                 timeout: float = 10.0) -> None:
        super().__init__(name or f"smtp://{host}:{port}")
        if not to:
            raise SinkSpecError("smtp sink needs recipients: smtp://HOST:PORT?to=ADDR[,ADDR...]")
        self.host, self.port = host, port
        self.to = list(to)
        self.sender = sender
        self.digest = digest
        self.starttls, self.tls = starttls, tls
        self.username, self.password = username, password
        self.timeout = timeout

    def _connect(self) -> smtplib.SMTP:
        if self.tls:
            client: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout)
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.starttls:
            client.starttls(context=ssl.create_default_context())
        if self.username:
            client.login(self.username, self.password or "")
        return client

    def _message(self, alerts: Sequence[Alert]) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message["Message-ID"] = make_msgid(domain="sentinel.local")
        if len(alerts) == 1:
            message["Subject"] = f"Sentinel: {slack_text(alerts[0])}"[:200]
            message["X-Sentinel-Alert-Id"] = alerts[0].alert_id
        else:
            message["Subject"] = f"Sentinel: {len(alerts)} alerts (seq {alerts[0].seq}-{alerts[-1].seq})"
        lines = [slack_text(alert) for alert in alerts]
        lines.append("")
        lines.extend(json.dumps(json.loads(alert.line), indent=2, ensure_ascii=False) for alert in alerts)
        message.set_content("\n".join(lines) + "\n")
        return message

    def deliver(self, alerts: Sequence[Alert]) -> None:
        done = 0
        try:
            client = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP {self.host}:{self.port}: {_smtp_reason(exc)}") from exc
        try:
            chunks = [list(alerts)] if self.digest else [[alert] for alert in alerts]
            for chunk in chunks:
                refused = client.send_message(self._message(chunk), self.sender, self.to)
                if refused:
                    raise smtplib.SMTPRecipientsRefused(refused)
                done += len(chunk)
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP {self.host}:{self.port}: {_smtp_reason(exc)}", done=done) from exc
        finally:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()


def _smtp_reason(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        message = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        return f"{exc.smtp_code} {message}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "recipients refused: " + ", ".join(
            f"{addr} ({code} {msg.decode('utf-8', 'replace') if isinstance(msg, bytes) else msg})"
            for addr, (code, msg) in exc.recipients.items())
    return str(exc) or type(exc).__name__


def parse_sink(spec: str, *, options: SinkOptions | None = None) -> Sink:
    """Build a sink from its spec string; SinkSpecError (one line) when it does not parse."""
    options = options or SinkOptions()
    raw = spec.strip()
    name: str | None = None
    match = _NAME.match(raw)
    if match:  # a NAME has no ':', so `file:a=b` is a path, not a name
        name, raw = match.group(1), match.group(2).strip()
    if raw == "stdout":
        return StdoutSink(name or "stdout")
    if raw.startswith("file:"):
        path = raw[len("file:"):]
        if path.startswith("//"):
            path = urlsplit(raw).path
        if not path:
            raise SinkSpecError(f"--sink {spec!r}: file sink needs a path (file:PATH)")
        return FileSink(path, name)
    if raw.startswith("webhook:"):
        url = raw[len("webhook:"):]
        if not url:
            raise SinkSpecError(f"--sink {spec!r}: webhook sink needs a URL (webhook:https://...)")
        try:
            return WebhookSink(url, name, timeout=options.webhook_timeout, body=options.webhook_format)
        except SinkSpecError as exc:
            raise SinkSpecError(f"--sink {spec!r}: {exc}") from None
    if raw.startswith(("smtp://", "smtps://")):
        parts = urlsplit(raw)
        try:
            port = parts.port
        except ValueError:
            raise SinkSpecError(f"--sink {spec!r}: port is not a number") from None
        if not parts.hostname:
            raise SinkSpecError(f"--sink {spec!r}: smtp sink needs a host (smtp://HOST:PORT?to=ADDR)")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"to", "from", "digest", "starttls"}
        if unknown:
            raise SinkSpecError(f"--sink {spec!r}: unknown smtp option(s) {', '.join(sorted(unknown))}")
        to = [addr.strip() for value in query.get("to", []) for addr in value.split(",") if addr.strip()]
        if not to:
            raise SinkSpecError(f"--sink {spec!r}: smtp sink needs recipients (?to=ADDR[,ADDR...])")
        if any("@" not in addr for addr in to):
            raise SinkSpecError(f"--sink {spec!r}: recipients must be email addresses")

        def flag(key: str) -> bool:
            value = (query.get(key) or ["0"])[-1].lower()
            if value not in ("", "0", "1", "true", "false", "yes", "no"):
                raise SinkSpecError(f"--sink {spec!r}: {key} must be 0 or 1")
            return value in ("", "1", "true", "yes")

        tls = parts.scheme == "smtps"
        port = port or (465 if tls else 25)
        return SmtpSink(
            parts.hostname, port, name or f"{parts.scheme}://{parts.hostname}:{port}?to={','.join(to)}", to=to,
            sender=(query.get("from") or [options.smtp_from])[-1], digest=flag("digest"),
            starttls=flag("starttls"), tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            timeout=options.smtp_timeout,
        )
    raise SinkSpecError(f"--sink {spec!r}: {SINK_USAGE}")
