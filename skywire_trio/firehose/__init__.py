"""The upstream side: frame decoding, the websocket reader, and recorded-frame tooling."""
