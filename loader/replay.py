"""Replay of CSV and NDJSON files (gzip too): streamed, mapped, validated, bad rows to a rejects file."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from loader.schema import COLUMNS, REQUIRED, RowError, validate

csv.field_size_limit(1 << 20)


class ReplayError(Exception):
    """The file as a whole cannot be replayed (missing, unreadable, no usable header)."""


def parse_map(items: Iterable[str]) -> dict[str, str]:
    """`--map` items `column=source_field` (comma-separated allowed) as {column: source_field}."""
    mapping: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            target, sep, source = part.partition("=")
            target, source = target.strip(), source.strip()
            if not sep or not target or not source:
                raise ReplayError(f"--map expects COLUMN=FIELD, got {part!r}")
            if target not in COLUMNS:
                raise ReplayError(f"--map: {target!r} is not a column of fraud.transactions "
                                  f"({', '.join(COLUMNS)})")
            mapping[target] = source
    return mapping


def detect_format(path: Path) -> str:
    """'csv' or 'ndjson', from the name (.csv, .ndjson, .jsonl, .json, each optionally .gz)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".ndjson", ".jsonl", ".json")):
        return "ndjson"
    with _open(path) as handle:
        head = handle.read(4096).lstrip()
    return "ndjson" if head.startswith("{") else "csv"


def _open(path: Path) -> TextIO:
    with open(path, "rb") as raw:
        magic = raw.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")


def _rename(record: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    if not mapping:
        return dict(record)
    out = dict(record)
    for target, source in mapping.items():
        out[target] = record.get(source)
    return out


def read_records(path: Path, *, fmt: str | None = None) -> Iterator[tuple[int, dict | RowError, str]]:
    """(line number, record or RowError, raw text) for each data line, streamed."""
    fmt = fmt or detect_format(path)
    if fmt == "ndjson":
        yield from _read_ndjson(path)
    elif fmt == "csv":
        yield from _read_csv(path)
    else:
        raise ReplayError(f"unknown format {fmt!r}; expected csv or ndjson")


def _read_ndjson(path: Path) -> Iterator[tuple[int, dict | RowError, str]]:
    with _open(path) as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, RowError(f"not valid JSON: {exc.msg} at column {exc.colno}"), text
                continue
            if not isinstance(record, dict):
                yield number, RowError("not a JSON object"), text
                continue
            yield number, record, text


def _read_csv(path: Path) -> Iterator[tuple[int, dict | RowError, str]]:
    with _open(path) as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ReplayError(f"{path}: unreadable CSV header: {exc}") from None
        header = [h.strip() for h in header]
        width = len(header)
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, RowError(f"malformed CSV: {exc}"), ""
                continue
            raw = ",".join(fields)
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != width:
                yield reader.line_num, RowError(f"expected {width} fields, got {len(fields)}"), raw
                continue
            yield reader.line_num, dict(zip(header, fields)), raw


def csv_header(path: Path) -> list[str] | None:
    """The header of a CSV file, to check required columns before anything is sent."""
    with _open(path) as handle:
        try:
            return [h.strip() for h in next(csv.reader(handle))]
        except (StopIteration, csv.Error):
            return None


class Rejects:
    """Writes rejected rows as NDJSON lines {line, reason, raw}; the file is created on the first one."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._handle: TextIO | None = None

    def add(self, line: int | None, reason: str, raw: str | Mapping | None = None) -> None:
        self.count += 1
        if self.path is None:
            return
        if self._handle is None:
            self._handle = open(self.path, "a", encoding="utf-8")
        self._handle.write(json.dumps({"line": line, "reason": reason, "raw": raw}, default=str) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def replay(
    path: str | Path,
    *,
    mapping: Mapping[str, str] | None = None,
    fmt: str | None = None,
    rejects: Rejects | None = None,
) -> Iterator[tuple]:
    """Valid rows (COLUMNS order) from a file; bad rows go to `rejects` with line and reason."""
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"no such file: {path}")
    mapping = dict(mapping or {})
    fmt = fmt or detect_format(path)
    if fmt == "csv":
        header = csv_header(path)
        if header is None:
            raise ReplayError(f"{path}: empty file or no CSV header")
        available = set(header) | set(mapping)
        missing = [c for c in REQUIRED if c not in available]
        if missing:
            raise ReplayError(
                f"{path}: no column {', '.join(missing)} in the header "
                f"(name it, or map one with --map {missing[0]}=FIELD)"
            )
        absent = [src for src in mapping.values() if src not in header]
        if absent:
            raise ReplayError(f"{path}: --map refers to {', '.join(absent)}, not in the header")
    rejects = rejects or Rejects(None)
    for line, record, raw in read_records(path, fmt=fmt):
        if isinstance(record, RowError):
            rejects.add(line, str(record), raw)
            continue
        try:
            yield validate(_rename(record, mapping))
        except RowError as exc:
            rejects.add(line, str(exc), raw)
