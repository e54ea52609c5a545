"""Onion routing (issue 14; DESIGN.md "Onion routing"): circuits, relays, streams over them.

Sans-IO cores of the circuit layer, one concern per module (no trio or libp2p import):
- `cells`: fixed-size (4096-byte) cells, relay messages and their strict decoders, the stream framer.
- `ntor`: the per-hop ntor handshake (X25519, onion key + identity binding, HKDF keys).
- `relay_crypto`: layered per-hop encryption, the innermost layer authenticated (tamper,
  replay and reorder detection).
- `flow`: SENDME windows (authenticated circuit SENDMEs) and the stream multiplexer.
- `links`: circuit ids per link.
- `padding`: the constant-rate padding clock.
- `circuit`: a client circuit (telescoping build, streams, padding option).
- `relay`: the relay core (create/extend/forward/serve streams; knows only its neighbours).
- `pathsel`: path selection and the persisted guard set.
- `cbt`: the adaptive circuit build timeout (Pareto fit of build times).
- `manager`: the client side of a node (`OnionClient`): builds circuits over selected paths,
  routes their cells, feeds build times to `cbt` and outcomes to the guard set.
- `rendezvous`: introduction and rendezvous points at a relay (the relay-side mechanics; the
  circuits join there and the two ends talk over an end-to-end virtual hop).
- `actions`: what the cores ask the adapter to do; `dispatch`: the one table that carries them
  out; `config` (checked at start with `periods` and `service_ports`), `errors`, `wire_names`
  (the stream ids and DHT namespaces, declared once).
The hidden-service side, also sans-IO where it can be:
- `address`: `.fog` addresses (base32 of key, checksum, version); `blinding`: time periods and
  blinded keys; `descriptor`: signed, encrypted descriptors; `hsdir`: their DHT validator;
  `hsdesc`: what a service publishes and where a client looks; `onionkey`: relays' rotated,
  identity-signed onion keys; `keyfiles`: key files in the data dir; `services`: the
  `.fog` port -> local TCP port map; `socks` (sans-IO) and `socks_server` (trio): the SOCKS5
  port; `hs_errors`.
The trio adapter is in two steps: `protocol.py`, the role's shell, started with the node (the
streams, DHT namespaces and RPC methods), and `parts.py`, the working parts built on both
lists above, which `loading.py` imports once the node is ready.
"""
