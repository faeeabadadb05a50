"""The log side: the database module and the batcher that writes to it."""
