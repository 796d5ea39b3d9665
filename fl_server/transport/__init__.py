"""The server's transports: Socket.IO (control) and Kafka (weights), thin over the round loop."""
