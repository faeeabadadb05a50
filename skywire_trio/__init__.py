"""skywire-trio: the ATProto firehose into a durable, day-partitioned PostgreSQL log."""

__version__ = "0.1.0"
