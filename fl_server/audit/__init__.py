"""fl-audit: replay a session from Kafka and check every round of its history (see ``audit.audit_session``)."""
