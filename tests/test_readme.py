"""README.md's CLI reference is generated from a live daemon's help and must match it."""
from __future__ import annotations

from pathlib import Path

from fognode.tools.docs import cli_reference, render

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_cli_reference_matches_the_daemon() -> None:
    old = README.read_text()
    assert render(old, cli_reference()) == old, "README.md is stale: run `python -m fognode.tools.docs`"
