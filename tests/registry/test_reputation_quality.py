"""EigenTrust selection versus random selection in the sans-IO simulator (issue 4)."""
from __future__ import annotations

import pytest

from fognode.tools.reputation_sim import SimConfig, main, simulate


@pytest.mark.parametrize("behaviour", ["independent", "collusive"])
@pytest.mark.parametrize("malicious", [0.1, 0.3, 0.5])
def test_eigentrust_beats_random(behaviour: str, malicious: float) -> None:
    base = dict(peers=200, malicious=malicious, behaviour=behaviour, cycles=15, seed=3)
    rnd = simulate(SimConfig(policy="random", **base))
    tr = simulate(SimConfig(policy="trust", **base))
    assert rnd.honest_requests == tr.honest_requests > 0
    assert rnd.share > 0.6 * malicious                  # random tracks the malicious share
    assert tr.share < 0.4 * rnd.share, (tr.share, rnd.share)


def test_collusion_gains_colluders_nothing() -> None:
    base = dict(peers=200, malicious=0.3, cycles=15, seed=5, policy="trust")
    ind = simulate(SimConfig(behaviour="independent", **base))
    col = simulate(SimConfig(behaviour="collusive", **base))
    assert col.share <= ind.share + 0.02


def test_cli_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--peers", "60", "--fractions", "0.3", "--cycles", "3"])
    out = capsys.readouterr().out
    assert "EigenTrust pick" in out and "camouflage" in out and out.count("30%") == 3
    with pytest.raises(ValueError):
        simulate(SimConfig(behaviour="nope"))
