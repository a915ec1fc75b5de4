"""The replicated key-value state machine: MVCC on LMDB."""
