"""A deterministic simulator: whole quorumkv clusters in one process, from one seed.

One integer seed determines everything: the fault schedule, the network's
losses and delays, what a crash leaves on each disk, every node's election
timeouts and every client's operations. A failing seed replays exactly with
``python -m quorumkv.sim run --seed N --nodes K``.
"""

from quorumkv.sim.cluster import SimResult, run_simulation
from quorumkv.sim.options import SimOptions

__all__ = ["SimOptions", "SimResult", "run_simulation"]
