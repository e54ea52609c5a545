"""The fl role's stream ids and gossip topic, for its declaration (`FlRole.stream_ids`,
`topics`) before its numeric core loads (loading.py), and for the transfer modules that serve
them (transfer/streams.py, transfer/sessions.py): declared once, here, because those modules
import numpy."""
from __future__ import annotations

MODEL_STREAM = "/fognode/fl/model/1.0.0"
UPDATE_STREAM = "/fognode/fl/update/1.0.0"
SECAGG_STREAM = "/fognode/fl/secagg/1.0.0"
XFER_STREAM = "/fognode/fl/xfer/1.0.0"
TOPIC = "fognode/fl/sessions/1"
