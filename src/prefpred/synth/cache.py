"""An append-only JSONL cache of finished teacher answers, safe against a kill at any moment.

Each line is one finished request: ``{"key", "kind", "status", ...}``. ``status`` is

* ``ok``: a valid answer (``answer`` holds the parsed JSON for judgements, ``text`` the generated text);
* ``malformed``: the teacher answered, but never with valid output within the allowed attempts (``raw`` holds
  every text it sent, ``error`` the last reason). It is *finished*: a restart does not ask again unless told to
  (``--retry-failed``);
* ``rejected``: the server refused the request as invalid (HTTP 400/413/422, e.g. a pair longer than the
  teacher's context). Finished like ``malformed``: asking again would get the same answer;
* ``error``: no answer at all (retries exhausted on 429/5xx/timeouts/connection errors). It is recorded so that
  nothing is silently dropped, but a restart asks again.

Every record is written with one ``write`` call followed by ``flush`` and ``fsync``, so a record that was
reported finished survives a crash. A kill in the middle of a write can leave a partial last line: it is
ignored and cut off when the cache is opened again, before anything new is appended. One run at a time may
use a cache: it is locked (``flock``, released by the OS however the process ends) while open.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from prefpred.types import UserError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

FINISHED = ("ok", "malformed", "rejected")


def cache_key(*parts: str) -> str:
    """Stable key of a request: sha256 of its parts (e.g. teacher model, style version, pair hash)."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


class AnswerCache:
    """Append-only JSONL store of request results, keyed by :func:`cache_key` (the last record of a key wins)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")
        if fcntl is not None:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._fh.close()
                self._fh = None
                raise UserError(f"{self.path} is in use by another run (wait for it or pass another --cache)") from None
        self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        good_end = 0
        pos = 0
        bad = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:  # a partial last line from a kill mid-write
                logger.warning("%s: ignoring an unfinished last record (%d bytes)", self.path, len(data) - pos)
                break
            line = data[pos:nl]
            pos = nl + 1
            if line.strip():
                try:
                    rec = json.loads(line)
                    self.records[rec["key"]] = rec
                except (json.JSONDecodeError, KeyError, TypeError):
                    bad += 1
            good_end = pos
        if bad:
            logger.warning("%s: skipped %d unreadable record(s)", self.path, bad)
        if good_end < len(data):
            os.truncate(self.path, good_end)
            os.fsync(self._fh.fileno())

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def is_finished(self, key: str, *, retry_failed: bool = False) -> bool:
        """Whether ``key`` needs no new request (``ok``; ``malformed``/``rejected`` too unless ``retry_failed``)."""
        rec = self.records.get(key)
        if rec is None:
            return False
        if rec["status"] == "ok":
            return True
        return rec["status"] in FINISHED and not retry_failed

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (write + flush + fsync) and remember it."""
        if "key" not in record or "status" not in record:
            raise ValueError("a cache record needs 'key' and 'status'")
        line = json.dumps(record, ensure_ascii=False) + "\n"
        if self._fh is None:
            raise ValueError(f"cache {self.path} is closed")
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.records[record["key"]] = record

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
