"""Federated-learning node: trains on local data, publishes weight updates to Kafka."""
