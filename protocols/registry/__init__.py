"""Device registry and reputation (issue 4; DESIGN.md "Registry and reputation").

Sans-IO cores, one concern per module:
- `peerid`: peer id <-> Ed25519 public key.
- `record`: signed device records (capabilities + operator profile) and their decoder.
- `validator`: the `/fognode/device/<peer-id>` DHT namespace validator.
- `view`: the local view of known devices and queries by criteria.
- `liveness`: online/offline from heartbeats and pings.
- `observation`: signed reputation observations, rate limiting and the local-trust book.
- `checked`: observation batches the gossip check verified, kept for the handler to take.
- `eigentrust`: EigenTrust global trust (power iteration on sparse local trust).
- `reputation`: global scores per service between recomputes (EigenTrust in a worker thread).
- `core`: the registry state machine tying these together (`actions` out, `events` emitted).
Around them: `config` (the role's settings), `probe` (capability probe), `direct` (the
`/fognode/registry/1.0.0` stream: ping, record pull, anti-entropy sync), `api` (the
"registry" and "reputation" services for other roles), `metrics`, and the trio adapter
`protocol.RegistryRole`.
"""
