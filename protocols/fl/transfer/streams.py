"""What every FL transfer shares: the stream ids and the sessions gossip topic (declared in
fl/wire_names.py, which the role reads before its numeric core loads), the control-frame
bound and `Link` (the typed collaborators a transfer is handed, the transfer sessions among
them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from fognode.node.overlay import Overlay
from fognode.protocols.fl.actions import Action
from fognode.protocols.fl.config import FlConfig
from fognode.protocols.fl.metrics import FlMetrics
from fognode.protocols.fl.session.core import FlCore
from fognode.protocols.fl.transfer.encoded import EncodedModels
from fognode.protocols.fl.transfer.sessions import TransferSessions
from fognode.protocols.fl.wire_names import MODEL_STREAM, SECAGG_STREAM, TOPIC, UPDATE_STREAM, XFER_STREAM

MAX_CONTROL_FRAME = 64 * 1024

__all__ = ["MODEL_STREAM", "UPDATE_STREAM", "SECAGG_STREAM", "XFER_STREAM", "TOPIC",
           "MAX_CONTROL_FRAME", "Link"]


@dataclass(frozen=True)
class Link:
    """A transfer's collaborators: the overlay, the role's config and metrics, the core, the
    node's transfer sessions (sessions.py: how a transfer reaches a peer), how to feed the
    core's answers back (`apply`), read the clock and see the role stopped, and the wire form
    of the models this node served (encoded.py)."""

    overlay: Overlay
    config: FlConfig
    metrics: FlMetrics
    core: FlCore
    apply: Callable[[list[Action]], None]
    now: Callable[[], float]
    closed: Callable[[], bool]
    sessions: TransferSessions
    encoded: EncodedModels = field(default_factory=EncodedModels)   # the models served

