"""Webhook delivery: a reader of the log that POSTs matching events to subscribers.

Reads the log only through ``skywire_trio.log``; never imports ``api/``, ``firehose/`` or
another reader.
"""
