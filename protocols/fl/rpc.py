"""The `fl.*` RPC methods: start a session, its status, the session list, stop, export.

They are mixed into `FlRole` (protocol.py) because the daemon finds a role's RPC methods on
its class (node/rpc/methods.declared_methods); `FlRpc` declares what it uses of the role.
"""
from __future__ import annotations

import abc
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import trio

from fognode.node.errors import LocalProtocolError, RemoteProtocolError, RpcError
from fognode.node.rpc.methods import NODE_ROLE_UNAVAILABLE, FilePath, Progress, rpc_method
from fognode.node.wire import unpack
from fognode.protocols.fl import errors as E
from fognode.protocols.fl.config import FlConfig
from fognode.protocols.fl.errors import SessionRejected
from fognode.protocols.fl.messages import PrivacyOptions, SelectionCriteria, SessionSpec
from fognode.protocols.fl.session.archive import SessionArchive
from fognode.protocols.fl.status_view import compact, new_rows

if TYPE_CHECKING:   # the numeric core (numeric.py): each method reads it from `_core()`, once loaded
    from fognode.protocols.fl.actions import Action
    from fognode.protocols.fl.executor import RoleActions
    from fognode.protocols.fl.rewards.ledger import LedgerLink
    from fognode.protocols.fl.session.core import FlCore
    from fognode.protocols.fl.training.prepared import PreparedTask, TaskKey
    from fognode.protocols.fl.training.process import TaskProcess


log = logging.getLogger("fognode.fl")

FOLLOW_POLL = 0.25      # seconds between looks at a followed session


class FlRpc(abc.ABC):
    """The role's `fl.*` RPC methods, over the role's core, task process and action runner."""

    config: FlConfig
    core: FlCore | None
    actions: RoleActions | None
    tasks: TaskProcess | None
    model_root: Path
    archive: SessionArchive
    ledger: LedgerLink | None

    @abc.abstractmethod
    def _apply(self, actions: list[Action]) -> None: ...

    @abc.abstractmethod
    async def wait_serving(self) -> ModuleType: ...

    async def _core(self) -> ModuleType:
        """The numeric core once the role serves (a call made while it loads waits for it);
        RpcError NODE_ROLE_UNAVAILABLE when its load failed or took too long."""
        try:
            return await self.wait_serving()
        except LocalProtocolError as e:
            raise RpcError(NODE_ROLE_UNAVAILABLE, str(e)) from None

    @abc.abstractmethod
    def _now(self) -> float: ...

    @abc.abstractmethod
    def _task_key(self, task: str, params: dict[str, float], init_seed: int) -> TaskKey: ...

    @abc.abstractmethod
    def _eligible_now(self, criteria: SelectionCriteria) -> int: ...

    @rpc_method("fl.start")
    async def start(self, task: str, rounds: int = 10, min_participants: int = 2,
                    participants: int = 5, strategy: str = "fedavg",
                    strategy_params: dict[str, float | str] | None = None,
                    task_params: dict[str, float] | None = None, deadline: float = 0.0,
                    local_epochs: int = 1, lr: float = 0.01, batch_size: int = 10,
                    wire_dtype: Literal["float32", "float16"] = "float32", fallbacks: int = 2,
                    max_retries: int = 3, optin_seconds: float = -1.0, dp_clip: float = 0.0,
                    dp_noise: float = 0.0, dp_delta: float = 1e-5, secagg: bool = False,
                    region: str = "", capabilities: list[str] | None = None,
                    min_reputation: float = 0.0, charging_only: bool = False, min_cores: int = 0,
                    min_memory_mb: int = 0, reward_budget: int = 0,
                    hierarchical: bool = False) -> dict[str, Any]:
        """Start a federated-learning session that this node coordinates; returns its id.

        TASK is an installed task (`synthetic`, `synthetic_mlp`, ...). The session runs ROUNDS
        rounds of PARTICIPANTS selected nodes each, needing MIN_PARTICIPANTS usable updates per
        round within DEADLINE seconds (default from the node config). STRATEGY is fedavg,
        fedprox, fedavgm, fedadam, fedyogi, fedadagrad, qfedavg, median, trimmed_mean, krum,
        multikrum or bulyan,
        with STRATEGY_PARAMS (e.g. {"mu": 0.1}, {"f": 1}; {"semantics": "flower"} for Flower's
        variant of fedadam, fedyogi, fedadagrad and multikrum). DP_CLIP > 0 turns on central DP with
        noise multiplier DP_NOISE. SECAGG runs secure aggregation: the aggregator sees only the sum
        of the updates (mean-based strategies only; robust ones get 507). HIERARCHICAL
        aggregates per registry region first (one elected aggregator per region, then a global
        one; mean-based strategies only, robust ones get 502, with SECAGG 507). Selection
        criteria: REGION, CAPABILITIES, MIN_REPUTATION (0..1), CHARGING_ONLY, MIN_CORES,
        MIN_MEMORY_MB. REWARD_BUDGET (micro-units) is locked from this node's default wallet
        into the session's ledger reward pool before the session is announced (202 and the
        shortfall when the wallet cannot pay it); rounds are paid from the pool and what is
        left returns to the wallet after the pool's deadline. Refused before it starts (500): DP_NOISE without DP_CLIP (no privacy),
        MIN_PARTICIPANTS or PARTICIPANTS below what the strategy needs per round (krum and
        multikrum n >= 2f + 3, bulyan n >= 4f + 3). The result's `warnings` say when fewer
        devices are eligible now than asked for. Errors: 500 bad parameter, 501 task not
        available, 502 strategy, 507 unsupported privacy option.
        """
        num = await self._core()
        assert self.core is not None and self.tasks is not None
        if task not in self.config.tasks:
            raise RpcError(E.FL_UNKNOWN_TASK, f"task {task!r} is not enabled on this node "
                                              f"(enabled: {self.config.tasks})")
        try:     # a choice by name ("semantics": "flower") travels as its index
            sparams = num.wire_params(strategy, strategy_params or {})
        except num.StrategyError as e:
            raise RpcError(E.FL_BAD_STRATEGY, str(e)) from None
        try:
            spec = SessionSpec(
                task=task, rounds=rounds, min_participants=min_participants,
                participants=participants, strategy=strategy,
                strategy_params=sparams, task_params=dict(task_params or {}),
                deadline=deadline if deadline > 0 else self.config.default_deadline,
                local_epochs=local_epochs, lr=lr, batch_size=batch_size, wire_dtype=wire_dtype,
                fallbacks=fallbacks, max_retries=max_retries,
                optin_seconds=optin_seconds if optin_seconds >= 0 else self.config.optin_seconds,
                reward_budget=reward_budget,
                privacy=PrivacyOptions(dp_clip, dp_noise, dp_delta, secagg),
                criteria=SelectionCriteria(region, tuple(capabilities or ()), min_reputation,
                                           charging_only, min_cores, min_memory_mb),
                hierarchical=hierarchical)
            # the same checks every receiving node applies to the announcement
            SessionSpec.decode(_fields_of(spec))
        except RemoteProtocolError as e:
            raise RpcError(E.FL_BAD_REQUEST, str(e).replace("fl.SessionSpec: ", "")) from None
        try:
            strategy = num.build_strategy(spec)
        except num.StrategyError as e:
            code = E.FL_UNSUPPORTED if secagg else E.FL_BAD_STRATEGY
            raise RpcError(code, str(e)) from None
        checked = num.preflight(spec, strategy, self._eligible_now(spec.criteria))
        if checked.refusals:
            raise RpcError(E.FL_BAD_REQUEST, "; ".join(checked.refusals))
        nonce = os.urandom(16)
        try:
            prepared = await self.tasks.prepare(self._task_key(task, spec.task_params, num.init_seed_of(nonce)))
        except num.TaskError as e:
            raise RpcError(E.FL_UNKNOWN_TASK if "installed" in str(e) else E.FL_BAD_REQUEST, str(e)) from None
        if prepared.layout.size * 4 > self.config.max_model_bytes:
            raise RpcError(E.FL_BAD_REQUEST, f"the model has {prepared.layout.size} parameters, over "
                                             f"this node's max_model_bytes {self.config.max_model_bytes}")
        secagg_round = num.secagg_round
        if secagg and (prepared.layout.size + 1) * 8 > secagg_round.MAX_BODY - (1 << 20):
            raise RpcError(E.FL_BAD_REQUEST, f"the model has {prepared.layout.size} parameters: its "
                                             f"masked secure-aggregation input (8 bytes each) is over "
                                             f"the {secagg_round.MAX_BODY >> 20} MiB limit")
        now = self._now()
        ann = self.core.new_announcement(spec, prepared, nonce, now)
        if self.ledger is not None:
            ann = await self.ledger.fund(ann, self.core.key)   # a reward budget: locked in the session's pool
        elif spec.reward_budget > 0:
            raise RpcError(E.FL_BAD_REQUEST, "the fl role is not running yet: a reward budget cannot be funded")
        try:
            actions = self.core.start_session(ann, prepared, now)
        except SessionRejected as e:
            raise RpcError(E.FL_BAD_REQUEST, str(e)) from None
        self._apply(actions)
        log.info("fl: session %s started: task %s, strategy %s, %d rounds of %d participants (at least %d)%s",
                 ann.session_id.hex()[:16], task, strategy, rounds, participants, min_participants,
                 f"; warnings: {'; '.join(checked.warnings)}" if checked.warnings else "")
        return {"session_id": ann.session_id.hex(), "initial_model_hash": ann.initial_model_hash.hex(),
                "parameters": prepared.layout.size, "warnings": list(checked.warnings)}

    def _sid(self, session: str, *, archived: bool = False) -> bytes:
        """The session id; RpcError unless this node runs it (or, with `archived`, holds its
        record from before a restart)."""
        try:
            sid = bytes.fromhex(session)
        except ValueError:
            sid = b""
        if len(sid) != 32:
            raise RpcError(E.FL_BAD_REQUEST, f"session id must be 64 hex characters, got {session!r}")
        assert self.core is not None
        if sid not in self.core.sessions and not (archived and sid.hex() in self.archive.entries):
            raise RpcError(E.FL_UNKNOWN_SESSION, f"no session {session} on this node")
        return sid

    @rpc_method("fl.status")
    async def status(self, session: str, verbose: bool = False, follow: bool = False, *,
                     progress: Progress = Progress()) -> dict[str, Any]:
        """State of SESSION (running, completed, failed or stopped) and one row per completed
        round: participants, accepted updates, loss and accuracy of the round's base model on
        the participants' data, duration and the DP epsilon spent (on a participant: its part
        in each round). --verbose gives everything: per-round participants, accepted, dropped
        and rejected peers with reasons and weights, the candidates, the current plan, the
        session's coordinators (starter first, then its fallbacks) and the acting one, and
        this node's round timeline (`marks`: [time, round, try, step, peer], its last 256
        steps). --follow prints each round's row as it completes and returns when the session ends
        (with its outcome). An ended session is kept across restarts of this node
        (`archived`). Error 503: unknown."""
        await self._core()
        assert self.core is not None
        sid = self._sid(session, archived=True)
        if follow:
            seen = 0
            while sid in self.core.sessions:
                st = self._full_status(sid)
                for row in new_rows(st, seen):
                    await progress(row)
                seen = len(st.get("history") or ())
                if st["state"] != "running":
                    break
                await trio.sleep(FOLLOW_POLL)
        st = self._full_status(sid)
        return st if verbose else compact(st)

    def _full_status(self, sid: bytes) -> dict[str, Any]:
        assert self.core is not None
        if sid not in self.core.sessions:
            return dict(self.archive.entries[sid.hex()])
        st = self.core.status(sid)
        final = self._final_path(sid)
        st["model_file"] = str(final) if final is not None else None
        return st

    @rpc_method("fl.sessions")
    async def sessions(self) -> list[dict[str, Any]]:
        """Every session this node knows, newest first: id, task, strategy, state, this node's
        role, start time, rounds done of rounds, and why it failed; ended sessions are kept
        across restarts."""
        num = await self._core()
        assert self.core is not None
        rows = {r["session_id"]: r for r in map(num.session_row, self.archive.entries.values())}
        rows.update((r["session_id"], r) for r in self.core.session_list())
        return sorted(rows.values(), key=lambda r: -float(r.get("started") or 0.0))

    @rpc_method("fl.stop")
    async def stop(self, session: str) -> dict[str, Any]:
        """Stop SESSION (only on its acting coordinator: the starter, or the fallback coordinator
        that took it over); the final model is saved in the data dir with its hash. Errors: 503
        unknown session, 504 not the acting coordinator."""
        num = await self._core()
        assert self.core is not None
        sid = self._sid(session)
        try:
            actions = self.core.stop_session(sid, self._now())
        except PermissionError as e:
            raise RpcError(E.FL_NOT_COORDINATOR, f"only the acting coordinator can stop a session: {e}") from None
        except ValueError as e:
            raise RpcError(E.FL_BAD_REQUEST, str(e)) from None
        saves = [a for a in actions if isinstance(a, num.SaveModel)]
        self._apply([a for a in actions if not isinstance(a, num.SaveModel)])
        assert self.actions is not None
        for a in saves:
            await self.actions.save(a)
        st = self.core.status(sid)
        final = self._final_path(sid)
        return {"session_id": session, "state": st["state"], "rounds_done": st["rounds_done"],
                "model_hash": st["model_hash"], "model_file": str(final) if final else None}

    def _final_path(self, sid: bytes) -> Path | None:
        assert self.core is not None
        return self._final_model(sid, self.core.sessions[sid].latest_model)

    def _final_model(self, sid: bytes, model_hash: bytes) -> Path | None:
        p = self.model_root / sid.hex() / f"final-{model_hash.hex()[:16]}.npy"
        return p if p.exists() else None

    @rpc_method("fl.export")
    async def export(self, session: str, path: FilePath, force: bool = False) -> dict[str, Any]:
        """Write SESSION's latest global model to PATH as a torch state dict file
        (`torch.load(PATH)` gives name -> tensor). A relative PATH is taken from where
        fognode-cli runs. An existing file is kept unless --force. Works on any node that holds
        the session's latest model (its participants and coordinators), also after a restart.
        Errors: 505 no model here, 506 cannot write (or the file exists)."""
        num = await self._core()
        assert self.core is not None and self.tasks is not None
        sid = self._sid(session, archived=True)
        target = Path(path)
        if not target.is_absolute():    # the RPC layer refuses one already (FilePath); direct callers too
            raise RpcError(E.FL_BAD_REQUEST, f"path must be absolute, got {path!r}")
        if target.is_dir():     # --force cannot help: name the file to write
            raise RpcError(E.FL_EXPORT_FAILED, f"{path} is a directory: give the path of the file to write, "
                                               f"e.g. {target / 'model.pt'}")
        if target.exists() and not force:
            raise RpcError(E.FL_EXPORT_FAILED, f"{path} exists: give --force to overwrite it")
        s = self.core.sessions.get(sid)
        if s is not None and s.prepared is not None:
            prepared: PreparedTask = s.prepared
            model_hash, rounds_done = s.latest_model, s.rounds_done
            bundle = self.core.model_for(sid, model_hash)
            params = bundle.params if bundle is not None else None
        elif s is None:     # ended before this node restarted: its archived record
            entry = self.archive.entries[sid.hex()]
            model_hash, rounds_done = bytes.fromhex(entry["model_hash"]), int(entry["rounds_done"])
            key = self._task_key(entry["task"], dict(entry.get("task_params") or {}),
                                 num.init_seed_of(bytes.fromhex(entry["nonce"])))
            try:
                prepared = await self.tasks.prepare(key)
            except num.TaskError as e:
                raise RpcError(E.FL_NO_MODEL, f"cannot load the session's task here: {e}") from None
            params = None
        else:
            raise RpcError(E.FL_NO_MODEL, "this node has not loaded the session's task")
        if params is None:
            final = self._final_model(sid, model_hash)
            if final is None:
                raise RpcError(E.FL_NO_MODEL, "this node holds no model of that session")
            params = await trio.to_thread.run_sync(num.load_model, final, model_hash)
        try:
            await self.tasks.export(prepared.key, params, target)
        except num.TaskError as e:
            raise RpcError(E.FL_EXPORT_FAILED, f"cannot export the model: {e}") from None
        except OSError as e:
            raise RpcError(E.FL_EXPORT_FAILED, f"cannot write {path}: {e.strerror or e}") from None
        return {"path": str(target), "model_hash": model_hash.hex(), "rounds_done": rounds_done,
                "tensors": [t.name for t in prepared.layout.tensors]}


def _fields_of(spec: SessionSpec) -> Any:
    from fognode.node.wire import Fields, pack

    return Fields(unpack(pack(spec.to_wire())), "fl.SessionSpec")
