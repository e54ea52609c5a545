"""Device registry and reputation (issue 4; DESIGN.md "Registry and reputation").

Sans-IO cores, one concern per module:
- `peerid`: peer id <-> Ed25519 public key.
- `record`: signed device records (capabilities + operator profile) and their decoder.
- `validator`: the `/fognode/device/<peer-id>` DHT namespace validator.
- `view`: the local view of known devices and queries by criteria.
- `liveness`: online/offline from heartbeats and pings.
- `observation`: signed reputation observations, rate limiting and the local-trust book.
- `eigentrust`: EigenTrust global trust (power iteration on sparse local trust).
- `core`: the registry state machine tying these together (actions out).
The trio adapter is `protocol.RegistryRole`; the capability probe is `probe`.
"""
