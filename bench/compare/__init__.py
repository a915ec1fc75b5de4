"""quorumkv measured beside etcd and PySyncObj on one machine: ``make compare``.

``python -m bench.compare`` (run from the repository root) installs what the
other systems need, starts a 3-member cluster of each system on 127.0.0.1,
drives it with the same closed-loop load generator (``loadgen.py``, one adapter
per system in ``adapters/``) and prints one table; ``run.py`` says how.

Nothing in this package may import quorumkv at module level: the load
generator also runs under the other systems' throwaway venv.
"""
