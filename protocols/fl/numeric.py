"""The fl role's numeric core, imported in one go by loading.py in a worker thread once the
node is ready: everything of the role that needs numpy (the round engine, strategies, task
process, tensor transfers, the ledger link), re-exported for protocol.py and rpc.py. Nothing
here runs at import beyond the modules' own definitions; the role reads these names only
after the load (`FlRole.wait_serving`), so they never load on the event loop."""
from __future__ import annotations

from fognode.protocols.fl.actions import Action, SaveModel
from fognode.protocols.fl.executor import RoleActions
from fognode.protocols.fl.preflight import preflight
from fognode.protocols.fl.rewards.ledger import LedgerLink
from fognode.protocols.fl.secagg import round as secagg_round
from fognode.protocols.fl.session.core import FlCore
from fognode.protocols.fl.session.status import session_row
from fognode.protocols.fl.strategies.base import StrategyError
from fognode.protocols.fl.strategies.registry import build_strategy, wire_params
from fognode.protocols.fl.tasks import TaskError
from fognode.protocols.fl.training.modelstore import load_model
from fognode.protocols.fl.training.prepared import PreparedTask, TaskKey, init_seed_of
from fognode.protocols.fl.training.process import TaskProcess
from fognode.protocols.fl.transfer.models import serve_model
from fognode.protocols.fl.transfer.secagg import serve_secagg
from fognode.protocols.fl.transfer.updates import serve_update
from fognode.protocols.fl.transfer.xfer import serve_xfer

__all__ = ["Action", "FlCore", "LedgerLink", "PreparedTask", "RoleActions", "SaveModel", "StrategyError",
           "TaskError", "TaskKey", "TaskProcess", "build_strategy", "init_seed_of", "load_model", "preflight",
           "secagg_round", "serve_model", "serve_secagg", "serve_update", "serve_xfer", "session_row", "wire_params"]

