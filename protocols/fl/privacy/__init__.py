"""Privacy for federated learning: central differential privacy with an RDP accountant (`dp`).
Secure aggregation is its own package, `fognode.protocols.fl.secagg`."""
