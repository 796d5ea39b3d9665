"""Federated-learning coordinator: Socket.IO control plane, Kafka data plane, pluggable aggregation."""
