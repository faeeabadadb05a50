"""Fan-out: the log's events published to NATS JetStream (a reader of the log)."""
