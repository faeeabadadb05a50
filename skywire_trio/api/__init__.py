"""The consumer API: authenticated, filtered, paged HTTP access to the log."""
