"""quorumkv measured beside etcd and PySyncObj on one machine: ``make compare``.

``python -m bench.compare`` (run from the repository root) installs what the
other systems need, starts a 3-member cluster of each system on 127.0.0.1,
drives it with the same closed-loop load generator (``loadgen.py``, one adapter
per system in ``adapters/``) and prints one table; ``run.py`` says how.

Nothing in this package may need quorumkv at module level: the load
generator also runs under the other systems' throwaway venv. (histogram.py
takes the shared histogram from quorumkv when it is installed, and otherwise
loads that one standard-library file by its path in this checkout.)
"""
