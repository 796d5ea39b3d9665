"""Code shared by the federated-learning server and nodes: wire protocol, weight codec, Kafka and config helpers."""

PROTOCOL_VERSION = 1  # weight-chunk records ("v"); unchanged since the first release, so old topics still read
# The Socket.IO session ("protocol" in the connect hello). 2: start_round names the model spec by digest and the
# spec travels once per session (fl_model_spec); a node of version 1 is refused at connect with bad_version.
SESSION_PROTOCOL_VERSION = 2
