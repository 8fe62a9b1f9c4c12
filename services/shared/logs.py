"""Logs on stderr, one line each, with the call's facts.

Two formats (CRM_LOG_FORMAT):

    json   one JSON object a line (the default: for servers run alone and log
           collectors), every fact a field
    text   for a person at a terminal (`make run` sets it): the time, the
           process and the message, and the few facts worth reading. Access
           lines of calls that went well are left out; refusals and failures stay.

Text is never escaped for ASCII: a console-SMS line shows 😊, not \\ud83d\\ude0a.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from services.shared.context import maybe_call

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
ACCESS_LOGGERS = ("crm.access",)
FORMATS = ("json", "text")
# Facts a person reads in the text format; the rest stay in the JSON format.
_TEXT_FACTS = ("code", "status", "ms", "principal", "port", "reason")


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "process": self.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        call = maybe_call()
        if call is not None:
            line.update(request_id=call.request_id, rpc=call.rpc, principal=call.principal)
        # A record's own facts (as the access log's) win over the ambient call's.
        line.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`14:03:22 messaging  SMS to +14155550123: See you 😊`"""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        level = "" if record.levelno == logging.INFO else f"{record.levelname} "
        facts = " ".join(f"{k}={record.__dict__[k]}" for k in _TEXT_FACTS
                         if k in record.__dict__ and record.__dict__[k] not in ("", None))
        line = f"{when} {self.process:<9} {level}{record.getMessage()}"
        if facts and record.name not in ACCESS_LOGGERS:
            line += f"  ({facts})"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class QuietAccess(logging.Filter):
    """Drops the access lines of calls that went well (gRPC OK, HTTP below 400)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in ACCESS_LOGGERS:
            return True
        code = record.__dict__.get("code")
        status = record.__dict__.get("status")
        if code is not None:
            return bool(code != "OK")
        return not isinstance(status, int) or status >= 400


def log_format(raw: str) -> str:
    if raw.lower() not in FORMATS:
        raise ValueError("expected json or text")
    return raw.lower()


def configure(process: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "text":
        handler.setFormatter(TextFormatter(process))
        handler.addFilter(QuietAccess())
    else:
        handler.setFormatter(JsonFormatter(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Our own access log line per call says what these would, with more context.
    for noisy in ("aiohttp.access", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
