"""Code shared by the federated-learning server and nodes: wire protocol, weight codec, Kafka and config helpers."""

PROTOCOL_VERSION = 1
