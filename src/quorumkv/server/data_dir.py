"""A node's data directory: what lives where, and refusing directories that are not ours.

::

    DATA_DIR/
      member.json     who this directory belongs to: name, node id, cluster id, format
      wal/            the Raft write-ahead log
      snap/           snapshot files
      kv/             the state machine (LMDB)

A directory of another member or another cluster is refused with a clear
DataDirError, so a misconfigured node never joins the wrong cluster with
someone else's log.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from quorumkv.errors import DataDirError
from quorumkv.storage import fsutil

FORMAT = 1


@dataclass(frozen=True, slots=True)
class DataDir:
    root: Path

    @property
    def wal(self) -> Path:
        return self.root / "wal"

    @property
    def snap(self) -> Path:
        return self.root / "snap"

    @property
    def kv(self) -> Path:
        return self.root / "kv"

    @property
    def scratch(self) -> Path:
        """Temporary files (snapshot copies in the making); emptied at start."""
        return self.root / "tmp"

    @property
    def member_file(self) -> Path:
        return self.root / "member.json"

    def exists(self) -> bool:
        return self.member_file.is_file()

    def claim(self, *, name: str, node_id: int, cluster_id: int) -> bool:
        """Check the directory is this member's, or make it so. True if it was new."""
        if self.exists():
            try:
                info = json.loads(self.member_file.read_text())
            except (OSError, ValueError) as e:
                raise DataDirError(f"{self.member_file} is unreadable: {e}") from None
            if not isinstance(info, dict) or info.get("format") != FORMAT:
                raise DataDirError(f"{self.root} is not a quorumkv data directory "
                                   f"of format {FORMAT}")
            if info.get("name") != name or info.get("node_id") != node_id:
                raise DataDirError(f"{self.root} belongs to member {info.get('name')!r}, "
                                   f"not {name!r}")
            if info.get("cluster_id") != cluster_id:
                raise DataDirError(f"{self.root} belongs to another cluster "
                                   f"(id {info.get('cluster_id')}, expected {cluster_id})")
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        leftovers = [p.name for p in self.root.iterdir()]
        if leftovers:
            raise DataDirError(f"{self.root} is not empty and has no member.json "
                               f"({', '.join(sorted(leftovers)[:5])}): refusing to use it")
        body = json.dumps({"format": FORMAT, "name": name, "node_id": node_id,
                           "cluster_id": cluster_id}, indent=2).encode()
        tmp = self.member_file.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.member_file)
        fsutil.sync_dir(self.root)
        return True
