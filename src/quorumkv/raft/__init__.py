"""The Raft consensus core: pure, deterministic, sans-I/O."""
