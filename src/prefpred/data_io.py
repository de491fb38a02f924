"""Shared by every data reader: the :class:`LoadResult`, row collection with unique ids and ``skip_invalid``,
cell and label parsing, and raw file access that recognises content by its first bytes.

gzip is decompressed whatever the file is called, parquet is recognised under any name (:func:`is_parquet`),
and other binary content (zip, bzip2, xz, zstd, 7z, SQLite, images, PDF, NUL bytes) is refused in one line that
says what it is. :func:`show` escapes and trims any value quoted in an error line, so no raw bytes or control
characters reach a terminal. Readers register themselves in :data:`READERS` with :func:`register_reader`.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.types import DataError, Pair, Turn

logger = logging.getLogger(__name__)

ARENA_TEXT_COLUMNS = ("prompt", "response_a", "response_b")
ARENA_LABEL_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")
READERS: dict[str, Any] = {}
"""Reader name -> ``reader(path, *, skip_invalid, seed) -> LoadResult``."""
RAW_BYTES = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (decoded with surrogateescape)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

csv.field_size_limit(2**31 - 1)


@dataclass
class LoadResult:
    """Pairs read from a source, plus what was dropped with ``skip_invalid``."""

    pairs: list[Pair]
    dropped: list[DataError] = field(default_factory=list)
    path: str | None = None
    format: str | None = None
    notes: dict[str, int] = field(default_factory=dict)
    """What was accepted but changed, with a row count (e.g. ragged turns padded)."""

    def drop_summary(self) -> dict[str, int]:
        """How many rows were dropped, by reason."""
        return dict(Counter(_reason(e) for e in self.dropped))


NOTE_RAGGED = "rows whose prompt and responses have different numbers of turns (padded with empty text)"
NOTE_BOTH_BAD = "'both_bad' votes counted as ties"
BOTH_BAD = ("both_bad", "tie (bothbad)")


def show(value: Any, limit: int = 60) -> str:
    """``repr`` of a value for an error line: escaped (no raw bytes or control characters) and trimmed."""
    text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in repr(value))
    return text if len(text) <= limit else text[: limit - 2] + "…" + text[-1]  # keeps the closing quote


def _reason(e: DataError) -> str:
    msg = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "…", e.message)
    return f"{e.column}: {msg}" if e.column else msg


def register_reader(name: str):
    def deco(fn):
        READERS[name] = fn
        return fn

    return deco


# --------------------------------------------------------------------------------------------- text helpers
def clean_text(value: Any) -> str:
    """``None`` -> ``""``; lone UTF-16 surrogates (invalid ``\\ud83d`` escapes) replaced by U+FFFD."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    if _LONE_SURROGATE.search(value):
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def turn_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [clean_text(v) for v in value]
    if value is None:
        return [""]
    return [clean_text(value)]


def json_list_cell(raw: Any, *, path: str, row: int, column: str) -> list[str]:
    """Decode one Arena cell: a JSON-encoded list of turns (items may be null)."""
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        raise DataError("empty cell (expected a JSON list of turns)", path=path, row=row, column=column)
    if isinstance(raw, (list, tuple, np.ndarray)):
        return turn_list(list(raw))
    text = str(raw)
    if RAW_BYTES.search(text):
        raise DataError("cell contains bytes that are not valid UTF-8", path=path, row=row, column=column)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"cell is not valid JSON ({e.msg}, char {e.pos}); expected a JSON list of turns such as "
                        '["Hello"]', path=path, row=row, column=column) from None
    if isinstance(value, str):
        return [clean_text(value)]
    if not isinstance(value, list):
        raise DataError(f"expected a JSON list of turns, got {type(value).__name__}", path=path, row=row,
                        column=column)
    return turn_list(value)


def make_turns(prompts: list[str], resp_a: list[str], resp_b: list[str], *, path: str, row: int,
                notes: Counter | None = None) -> tuple[Turn, ...]:
    """Turns of one row. Ragged rows (the real Kaggle data has a few) are padded with empty text rather than
    lost; they are counted in ``notes`` (one warning per file) and logged per row at debug level."""
    n = max(len(prompts), len(resp_a), len(resp_b))
    if n == 0:
        raise DataError("conversation has no turns", path=path, row=row, column="prompt")
    if not (len(prompts) == len(resp_a) == len(resp_b)):
        logger.debug("%s row %d: ragged turns (%d/%d/%d), padding", path, row, len(prompts), len(resp_a),
                     len(resp_b))
        if notes is not None:
            notes[NOTE_RAGGED] += 1
        prompts, resp_a, resp_b = ([*x, *[""] * (n - len(x))] for x in (prompts, resp_a, resp_b))
    return tuple(Turn(p, a, b) for p, a, b in zip(prompts, resp_a, resp_b, strict=True))


def one_hot_label(values: Sequence[Any], *, path: str, row: int) -> tuple[float, float, float]:
    nums = []
    for col, v in zip(ARENA_LABEL_COLUMNS, values, strict=True):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise DataError(f"label must be 0 or 1, got {show(v)}", path=path, row=row, column=col) from None
        if f not in (0.0, 1.0):
            raise DataError(f"label must be 0 or 1, got {show(v)}", path=path, row=row, column=col)
        nums.append(f)
    if sum(nums) != 1.0:
        raise DataError(f"label is not one-hot (winner_model_a/b/tie = {'/'.join(str(int(x)) for x in nums)})",
                        path=path, row=row, column="winner_model_a")
    return (nums[0], nums[1], nums[2])


def row_hint(path: str) -> str:
    """Added to the first bad row's error when rows are not skipped: there may be more, and a way past them."""
    listing = "" if str(path).startswith("hub:") else f"`prefpred data validate {path}` lists every bad row; "
    return f" ({listing}--skip-invalid drops bad rows)"


class Rows:
    """Collects pairs, enforcing unique ids and turning row errors into drops when asked."""

    def __init__(self, path: str, skip_invalid: bool):
        self.path = path
        self.skip_invalid = skip_invalid
        self.pairs: list[Pair] = []
        self.dropped: list[DataError] = []
        self.notes: Counter[str] = Counter()
        self._seen: dict[str, int] = {}

    def add(self, row: int, build) -> None:
        try:
            pair = build()
            if pair.id in self._seen:
                raise DataError(f"duplicate id {show(pair.id)} (first seen at row {self._seen[pair.id]})",
                                path=self.path, row=row, column="id")
        except DataError as e:
            if not self.skip_invalid:
                raise DataError(e.message + row_hint(self.path), path=e.path, row=e.row, column=e.column) from None
            self.dropped.append(e)
            return
        self._seen[pair.id] = row
        self.pairs.append(pair)

    def result(self) -> LoadResult:
        return LoadResult(self.pairs, self.dropped, notes=dict(self.notes))


# --------------------------------------------------------------------------------------------- raw file access
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_BINARY_MAGIC = {  # content prefpred cannot read as text, by its first bytes
    b"PK\x03\x04": "a zip archive (unzip it first)",
    b"BZh": "bzip2-compressed (decompress it first, or use gzip)",
    b"\xfd7zXZ\x00": "xz-compressed (decompress it first, or use gzip)",
    b"\x28\xb5\x2f\xfd": "zstd-compressed (decompress it first, or use gzip)",
    b"7z\xbc\xaf\x27\x1c": "a 7z archive (extract it first)",
    b"SQLite format 3\x00": "an SQLite database",
    b"\x89PNG": "a PNG image",
    b"%PDF": "a PDF document",
}


def _sniff(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(16)


def is_parquet(path: Path) -> bool:
    return path.suffix == ".parquet" or (path.is_file() and _sniff(path).startswith(_PARQUET_MAGIC))


def read_bytes(path: Path) -> bytes:
    """The file's bytes; gzip is decompressed whatever the name, other binary content is refused in one line."""
    if not path.exists():
        raise DataError("file not found", path=str(path))
    if path.is_dir():
        raise DataError("is a directory (pass a data file)", path=str(path))
    data = path.read_bytes()
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"not a valid gzip file ({show(str(e), 80)})", path=str(path)) from None
    elif path.suffix == ".gz":
        raise DataError("named .gz but not gzip-compressed", path=str(path))
    _refuse_binary(data, path)
    if not data.strip():
        raise DataError("file is empty", path=str(path))
    return data


def _refuse_binary(data: bytes, path: Path) -> None:
    for magic, what in _BINARY_MAGIC.items():
        if data.startswith(magic):
            raise DataError(f"is {what}, not a CSV/JSON/JSONL text file", path=str(path))
    if data.startswith(_PARQUET_MAGIC):
        raise DataError("is a parquet file (name it .parquet)", path=str(path))
    if data.startswith(_GZIP_MAGIC):
        raise DataError("is gzip-compressed twice (decompress it once)", path=str(path))
    if b"\x00" in data[:4096]:
        raise DataError("is a binary file (NUL bytes), not a CSV/JSON/JSONL text file", path=str(path))


def _decode_whole(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"bytes that are not valid UTF-8 at line {line} (byte offset {e.start})",
                        path=str(path)) from None


def json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    text = _decode_whole(read_bytes(path), path)
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"line is not valid JSON ({e.msg})", path=str(path), row=i) from None
        if not isinstance(obj, dict):
            raise DataError("each line must be a JSON object", path=str(path), row=i)
        yield i, obj


def json_document(path: Path) -> Any:
    text = _decode_whole(read_bytes(path), path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg} at line {e.lineno})", path=str(path)) from None
