"""The onion role's names on the wire, declared once: its two stream ids and its two DHT
namespaces. Nothing to import, so the role's shell (protocol.py) serves the streams and
validates the namespaces from the start, while the modules that speak them load after the
node is ready (loading.py).
"""
from __future__ import annotations

LINK_STREAM = "/fognode/onion/1.0.0"              # onion links: cells between neighbours (linkmgr.py)
HOSTING_STREAM = "/fognode/onion/hosting/1.0.0"   # hosted data: owner <-> host (hosting/wire.py)
HSDESC_NAMESPACE = "fognode-hsdesc"               # hidden-service descriptors (blinding.py, hsdir.py)
HOSTED_NAMESPACE = "fognode-hosted"               # hosted-data manifests (hosting/manifest.py)
