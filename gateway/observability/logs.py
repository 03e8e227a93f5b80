"""Logging: one JSON object per line (or plain text), the request id on every line written while serving it.

`citadel serve` hands `log_config()` to uvicorn, so its own lines and every worker's go through the same
formatter. The request id lives in a context variable set by the audit middleware for the whole request,
its background tasks included; a logging filter copies it onto each record. Payloads (prompts, answers)
are never logged unless CITADEL_LOG_PAYLOADS=true.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

REQUEST_ID: ContextVar[str | None] = ContextVar("citadel_request_id", default=None)
REQUEST_LOGGER = "gateway.requests"
# The per-request line's fields, as passed in `extra={"fields": {...}}`.
FIELDS_ATTR = "fields"


class RequestIdFilter(logging.Filter):
    """Stamp every record with the id of the request being served (None outside of one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", "pid", "request_id", ...fields, "exc"}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which worker, with several
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """For people at a terminal: `time level logger [request id] message key=value ...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(rid)s %(message)s%(kv)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.rid = f" [{request_id}]" if request_id else ""
        fields = getattr(record, FIELDS_ATTR, None)
        record.kv = "".join(f" {k}={v}" for k, v in fields.items()) if isinstance(fields, dict) else ""
        return super().format(record)


def log_config(*, level: str, fmt: str) -> dict[str, Any]:
    """A logging.config dict for uvicorn: every logger (uvicorn's included) through one stderr handler."""
    formatter = "json" if fmt == "json" else "text"
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {
            "json": {"()": f"{__name__}.JsonFormatter"},
            "text": {"()": f"{__name__}.TextFormatter"},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": formatter,
                "filters": ["request_id"],
            }
        },
        "loggers": {
            # uvicorn's loggers hand their records to the root's handler (no second format).
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": level, "handlers": [], "propagate": True},
        },
        "root": {"level": level, "handlers": ["default"]},
    }
