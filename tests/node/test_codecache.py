"""The dataclass methods' bytecode cache (node/codecache.py): what it writes, that a warm cache
compiles nothing and gives the classes the stdlib would have made, and that a foreign or
damaged file is ignored and replaced."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

from fognode.node.codecache import FORMAT, dataclass_code_cache, read_cache


def make_classes() -> tuple[type, type]:
    """Two dataclasses defined afresh at each call (the same source text every time)."""

    @dataclasses.dataclass(frozen=True)
    class Point:
        x: int
        y: float = 0.5
        tags: tuple[str, ...] = ()

    @dataclasses.dataclass(order=True)
    class Entry:
        key: str
        items: list[int] = dataclasses.field(default_factory=list)

    return Point, Entry


def behaviour(point: type, entry: type) -> list[Any]:
    p = point(1, tags=("a",))
    out: list[Any] = [repr(p), p == point(1, 0.5, ("a",)), hash(p) == hash(point(1, 0.5, ("a",)))]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 2
    e = entry("k")
    e.items.append(3)
    out += [repr(e), entry("a") < entry("b"), entry("k", [3]) == e, point.__init__.__annotations__]
    return out


def test_a_warm_cache_compiles_nothing_and_makes_the_same_classes(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = tmp_path / "fns.marshal"
    plain = make_classes()
    with dataclass_code_cache(path) as cold:
        assert cold is not None
        first = make_classes()
    assert cold.misses > 0 and path.exists()
    assert len(read_cache(path)) == len(cold.used)
    written = path.read_bytes()
    with dataclass_code_cache(path) as warm:
        assert warm is not None
        second = make_classes()
    assert warm.misses == 0 and warm.used.keys() == cold.used.keys()
    assert path.read_bytes() == written           # nothing new: not rewritten
    assert "exec" not in vars(dataclasses)       # the stdlib's own exec again outside the block
    expected = behaviour(*plain)
    assert behaviour(*first) == expected and behaviour(*second) == expected
    for a, b in zip(plain, second):              # the very bytecode the stdlib compiles
        for name in ("__init__", "__repr__", "__eq__"):
            assert getattr(a, name).__code__.co_code == getattr(b, name).__code__.co_code


@pytest.mark.parametrize("content", [b"", b"junk", FORMAT + b"\x00\x00\x0d\x0a" + b"x",
                                     FORMAT + b"wrong-magic-and-body"])
def test_a_foreign_or_damaged_file_is_ignored_and_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          content: bytes) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = tmp_path / "fns.marshal"
    path.write_bytes(content)
    assert read_cache(path) == {}
    with dataclass_code_cache(path) as cache:
        make_classes()
    assert cache is not None and cache.misses > 0
    assert len(read_cache(path)) == len(cache.used)


def test_nothing_is_written_when_bytecode_writing_is_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    path = tmp_path / "fns.marshal"
    with dataclass_code_cache(path) as cache:
        make_classes()
    assert cache is not None and cache.misses > 0 and not path.exists()


def test_an_active_cache_is_not_stacked(tmp_path: Path) -> None:
    with dataclass_code_cache(tmp_path / "a") as outer:
        with dataclass_code_cache(tmp_path / "b") as inner:
            make_classes()
        assert inner is None and vars(dataclasses).get("exec") is outer
    assert "exec" not in vars(dataclasses)


def test_the_blocks_of_one_start_share_one_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start imports in two blocks (node/startimports.py): the first with keep=True. The file
    then holds what both used, written once, and the next start compiles and writes nothing
    (without the session, each block would replace the other's entries at every start)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = tmp_path / "fns.marshal"

    def one_start() -> tuple[Any, Any]:
        with dataclass_code_cache(path, keep=True) as first:
            make_classes()
        with dataclass_code_cache(path) as second:
            @dataclasses.dataclass(frozen=True)
            class Other:
                name: str
                size: int = 0
        return first, second

    first, second = one_start()
    assert first is not None and second is not None
    assert first.misses > 0 and second.misses > 0
    assert len(read_cache(path)) == len(first.used) + len(second.used)
    written = path.read_bytes()
    first, second = one_start()
    assert first.misses == 0 and second.misses == 0
    assert path.read_bytes() == written
