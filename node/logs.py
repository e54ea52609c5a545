"""Logging: human-readable by default, JSON lines with --log-json.

py-libp2p logs a lot at INFO/WARNING for normal events (e.g. every Kademlia stream close),
so its loggers are held at ERROR unless the node runs at debug level; operators see ours.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

NOISY = ("libp2p", "multiaddr", "async_service", "aioquic", "trio_websocket")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "info", *, json_lines: bool = False) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.ERROR)
