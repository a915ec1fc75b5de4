"""The node process: drives the Raft core with asyncio, persists, sends, applies, serves clients."""
