"""How bytes travel: Kafka clients and their security settings, TLS for Socket.IO."""
