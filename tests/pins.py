"""Pins of third-party source the project's fixes rely on (node/p2pfix_*.py): each pinned
function's source is hashed, so an upgrade that changes one fails its test first."""
from __future__ import annotations

import hashlib
import inspect
from typing import Any, Mapping


def digest(f: Any) -> str:
    """The first 16 hex digits of the SHA-256 of `f`'s source: what a pin records."""
    return hashlib.sha256(inspect.getsource(f).encode()).hexdigest()[:16]


def changed(pinned: Mapping[Any, str]) -> list[str]:
    """The qualified names of the pinned functions whose source no longer matches its pin."""
    return [f.__qualname__ for f, pin in pinned.items() if digest(f) != pin]


def assert_unchanged(pinned: Mapping[Any, str], fix: str, package: str = "libp2p",
                     pinned_version: str = "0.8.1") -> None:
    """Fail, naming `fix` and the functions, when `package` is not the version the fix was
    written for or a pinned function changed."""
    from importlib.metadata import version
    assert version(package) == pinned_version, f"{package} {version(package)} under {fix}"
    moved = changed(pinned)
    assert not moved, f"{package} changed under {fix}: {moved}"
