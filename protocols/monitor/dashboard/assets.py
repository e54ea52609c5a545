"""The dashboard's files (`static/`: HTML, CSS, JS modules), read once at start and served
from memory: only files that exist there can be asked for, so no path reaches the disk."""
from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8"}
PAGES = ("/", "/network", "/ledger", "/fl", "/harvest", "/market", "/onion")  # all served by index.html


def load_assets(root: Path = STATIC) -> dict[str, tuple[str, bytes]]:
    """{"/assets/<relative path>": (content type, bytes)} for every file of a known type under
    `root`. Raises OSError if `root` cannot be read (a broken install)."""
    out: dict[str, tuple[str, bytes]] = {}
    for f in sorted(root.rglob("*")):
        ctype = TYPES.get(f.suffix)
        if f.is_file() and ctype is not None:
            out["/assets/" + f.relative_to(root).as_posix()] = (ctype, f.read_bytes())
    return out
