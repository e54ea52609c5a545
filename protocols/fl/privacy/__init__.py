"""Privacy for federated learning: central differential privacy with an RDP accountant (`dp`),
Shamir secret sharing (`shamir`) and secure aggregation (`secagg`)."""
