"""Hosted data on `.fog` addresses (issue 14 item 5: the seed's `deploy_hidden_service` and
`access_hidden_service`).

Sans-IO cores: `shards` (encryption and zfec k-of-n, content-addressed shards), `manifest`
(the manifest, its sealed DHT envelope under a blinded key, the DHT validator), `fees` (the
access payment a host checks), `store` (a host's shards under its quota, and their paid
leases), `levels` (what each privacy level promises), `wire` (owner<->host and
accessor->host messages). Trio adapters: `framing` (frames on a trio stream), `host` (the
host: its access gate behind a `.fog` service, the owners' stream, its market offer),
`owner` (deploy, paying the hosts, refunds, access fees received), `accessor`
(access), `errors`. The onion role (protocol.py) wires them.
"""
