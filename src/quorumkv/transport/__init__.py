"""Bytes on the wire: framing, the peer message codec, and (later) peer connections."""
