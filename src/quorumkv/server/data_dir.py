"""A node's data directory: what lives where, and refusing directories that are not ours.

::

    DATA_DIR/
      member.json     who this directory belongs to: name, node id, cluster id, format;
                      for a member that joined a running cluster, the members it was
                      told of (its peers until it has applied the registry); "removed"
                      once the cluster removed it
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
from typing import Any

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

    def read_info(self) -> dict[str, Any]:
        """The parsed member.json; DataDirError if it is not one of ours."""
        try:
            info = json.loads(self.member_file.read_text())
        except (OSError, ValueError) as e:
            raise DataDirError(f"{self.member_file} is unreadable: {e}") from None
        if (not isinstance(info, dict) or info.get("format") != FORMAT
                or type(info.get("cluster_id")) is not int):
            raise DataDirError(f"{self.root} is not a quorumkv data directory "
                               f"of format {FORMAT}")
        return info

    def cluster_id(self) -> int | None:
        """The cluster this directory belongs to, None if it belongs to none yet."""
        return int(self.read_info()["cluster_id"]) if self.exists() else None

    def claim(self, *, name: str, node_id: int, cluster_id: int,
              join_peers: dict[int, list[Any]] | None = None) -> tuple[bool, dict[str, Any]]:
        """Check the directory is this member's, or make it so.

        ``cluster_id`` 0 accepts whatever cluster the directory belongs to (a
        member that joined knows its cluster only from here). Returns whether
        it was new, and member.json's contents.
        """
        if self.exists():
            info = self.read_info()
            if info.get("name") != name or info.get("node_id") != node_id:
                raise DataDirError(f"{self.root} belongs to member {info.get('name')!r}, "
                                   f"not {name!r}")
            if cluster_id and info.get("cluster_id") != cluster_id:
                raise DataDirError(f"{self.root} belongs to another cluster "
                                   f"(id {info.get('cluster_id')}, expected {cluster_id})")
            if info.get("removed"):
                raise DataDirError(
                    f"member {name!r} was removed from cluster {info['cluster_id']}; its "
                    f"data directory {self.root} cannot serve again (start with an empty "
                    f"one to join anew)")
            return False, info
        if not cluster_id:
            raise DataDirError(f"{self.root} holds no member: a new member needs "
                               f"--initial-cluster or --join")
        self.root.mkdir(parents=True, exist_ok=True)
        leftovers = [p.name for p in self.root.iterdir()]
        if leftovers:
            raise DataDirError(f"{self.root} is not empty and has no member.json "
                               f"({', '.join(sorted(leftovers)[:5])}): refusing to use it")
        info = {"format": FORMAT, "name": name, "node_id": node_id, "cluster_id": cluster_id}
        if join_peers is not None:
            info["join_peers"] = {str(k): v for k, v in join_peers.items()}
        self._write(info)
        return True, info

    def mark_removed(self) -> None:
        """The cluster removed this member: the directory must never serve again."""
        info = self.read_info()
        info["removed"] = True
        self._write(info)

    def _write(self, info: dict[str, Any]) -> None:
        body = json.dumps(info, indent=2).encode()
        tmp = self.member_file.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.member_file)
        fsutil.sync_dir(self.root)
