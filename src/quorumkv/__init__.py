"""quorumkv: a distributed key-value store and coordination service replicated with Raft."""

__version__ = "0.1.0"
