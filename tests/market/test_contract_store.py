"""The contract store (contract_store.py, contracts.py) on a real directory: records survive a
new process's table, torn or foreign files are moved aside, a disk that refuses a write stops
the caller with ContractStoreError, eviction removes the file."""
from __future__ import annotations

from pathlib import Path

import pytest

from fognode.protocols.market.agreement import SLA, Terms
from fognode.protocols.market.contract_store import ContractStore, ContractStoreError
from fognode.protocols.market.contracts import Contract, Contracts
from fognode.protocols.market.sla import SlaMonitor
from tests.market.helpers import NOW, key

CUST, PROV = key("customer"), key("provider")


def terms(i: int = 0, service: str = "compute.wasm") -> Terms:
    return Terms(nonce=bytes([i]) * 16, round=0, customer=bytes(CUST.verify_key), provider=bytes(PROV.verify_key),
                 service=service, offer="o1", demand=b"d" * 32, prices=(("fuel", 500_000), ("gb_h", 7)),
                 usage=(("fuel", 10),), max_total=5_000_000, start=int(NOW), deadline=int(NOW) + 600,
                 debit_interval=120, sla=SLA(9900, 800, 1_000_000, 3_000_000, 30))


def contract(i: int = 0, role: str = "provider", service: str = "compute.wasm") -> Contract:
    t = terms(i, service)
    return Contract(t.terms_id, role, t, NOW + i)


def test_contracts_survive_a_restart_with_their_payment_and_sla_state(tmp_path: Path) -> None:
    table = Contracts(store=ContractStore(tmp_path / "contracts"))
    p = table.add(contract(0))
    p.escrow, p.payee, p.state, p.tasks, p.fuel = b"e" * 32, b"p" * 32, "running", 3, 12_345
    p.note_due, p.note_sig, p.paid, p.due = 40_000, b"s" * 64, 30_000, 40_000
    table.save(p)
    c = table.add(contract(1, "customer", "fog.hosting"))
    c.escrow, c.state, c.collateral, c.slashed = b"f" * 32, "running", 3_000_000, 1_000_000
    c.sla = SlaMonitor(c.terms.sla, NOW, NOW + 600, 5.0)
    for k in range(12):
        c.sla.record(NOW + k * 5, None if k >= 8 else 20)
    c.sla.tick(NOW + 100)
    table.save(c)

    again = Contracts(store=ContractStore(tmp_path / "contracts"))
    loaded = again.load()
    assert [x.id for x in loaded] == [p.id, c.id] and again.count() == len(again.all()) == 2
    q, d = again.get(p.id), again.get(c.id)
    assert q is not None and d is not None
    assert (q.escrow, q.payee, q.state, q.tasks, q.fuel, q.note_due, q.note_sig, q.paid, q.due) == \
        (p.escrow, p.payee, p.state, 3, 12_345, 40_000, b"s" * 64, 30_000, 40_000)
    assert q.terms == p.terms and q.created == p.created
    assert d.sla is not None and d.sla.to_record() == c.sla.to_record()
    assert [v.window for v in d.sla.breaches()] == [1]
    assert (d.collateral, d.slashed, d.service_contract) == (3_000_000, 1_000_000, True)


def test_torn_and_foreign_files_are_moved_aside_and_the_rest_loads(tmp_path: Path) -> None:
    root = tmp_path / "contracts"
    table = Contracts(store=ContractStore(root))
    good = table.add(contract(0))
    torn = contract(1)
    (root / f"{torn.id.hex()}.contract").write_bytes(torn.to_record()[:40])
    (root / f"{'ab' * 32}.contract").write_bytes(contract(2).to_record())      # not its id
    (root / "nothex.contract").write_bytes(b"x")
    again = Contracts(store=ContractStore(root))
    assert [c.id for c in again.load()] == [good.id]
    assert sorted(p.name for p in root.glob("*.bad")) == sorted(
        [f"{torn.id.hex()}.contract.bad", f"{'ab' * 32}.contract.bad", "nothex.contract.bad"])
    assert Contracts(store=ContractStore(root)).load()[0].id == good.id      # nothing re-read


def test_a_write_the_disk_refuses_raises(tmp_path: Path) -> None:
    root = tmp_path / "contracts"
    store = ContractStore(root)
    table = Contracts(store=store)
    c = table.add(contract(0))
    store.root = tmp_path / "gone" / "contracts"        # the directory vanished under us
    with pytest.raises(ContractStoreError) as e:
        table.save(c)
    assert c.id.hex()[:16] in str(e.value) and "not saved" in str(e.value)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ContractStoreError):
        ContractStore(tmp_path / "file" / "contracts")


def test_evicting_a_finished_contract_removes_its_file(tmp_path: Path) -> None:
    root = tmp_path / "contracts"
    table = Contracts(limit=2, store=ContractStore(root))
    a = table.add(contract(0))
    a.state = "settled"
    table.save(a)
    table.add(contract(1))
    table.add(contract(2))
    assert table.get(a.id) is None and not (root / f"{a.id.hex()}.contract").exists()
    assert len(list(root.glob("*.contract"))) == 2 and table.count() == len(table.all()) == 2
