"""Bytes on the wire: framing, the peer message codec, peer connections and snapshot streams."""
