"""Node configuration and the data directory: clear errors for every wrong input."""

from __future__ import annotations

from pathlib import Path

import pytest

from quorumkv.errors import DataDirError, InvalidArgument
from quorumkv.server.config import (
    NodeConfig,
    load_toml,
    node_id_for,
    parse_address,
    parse_initial_cluster,
)
from quorumkv.server.data_dir import DataDir
from quorumkv.server.node import removed_by


def test_initial_cluster_is_parsed_and_checked() -> None:
    members = parse_initial_cluster("n1=127.0.0.1:7001, n2=127.0.0.1:7002")
    assert members == {"n1": ("127.0.0.1", 7001), "n2": ("127.0.0.1", 7002)}
    for bad in ("n1", "n1=127.0.0.1", "n1=h:99999", "n1=h:1,n1=h:2", "n1=h:1,n2=h:1",
                "bad name=h:1"):
        with pytest.raises(InvalidArgument):
            parse_initial_cluster(bad)
    assert parse_address("[::1]:7001") == ("::1", 7001)


def test_member_ids_are_stable_nonzero_and_distinct() -> None:
    ids = {node_id_for(f"n{i}") for i in range(1000)}
    assert len(ids) == 1000 and 0 not in ids
    assert node_id_for("n1") == node_id_for("n1")


def test_a_node_must_be_in_its_initial_cluster(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not in the initial cluster"):
        NodeConfig(name="n9", data_dir=tmp_path,
                   initial_cluster=parse_initial_cluster("n1=127.0.0.1:7001"))


def test_toml_settings_are_read_and_unknown_ones_refused(tmp_path: Path) -> None:
    good = tmp_path / "node.toml"
    good.write_text('name = "n1"\ndata_dir = "/tmp/x"\ninitial_cluster = "n1=127.0.0.1:7001"\n'
                    "tick_ms = 50\n")
    settings = load_toml(good)
    assert settings["tick_ms"] == 50 and settings["data_dir"] == Path("/tmp/x")
    assert NodeConfig(**settings).initial_cluster == {"n1": ("127.0.0.1", 7001)}
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "n1"\ntypo_setting = 3\n')
    with pytest.raises(InvalidArgument, match="typo_setting"):
        load_toml(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(InvalidArgument):
        load_toml(broken)


def test_a_data_directory_belongs_to_one_member_of_one_cluster(tmp_path: Path) -> None:
    d = DataDir(tmp_path / "n1")
    with pytest.raises(DataDirError, match="needs --initial-cluster or --join"):
        d.claim(name="n1", node_id=1, cluster_id=0)
    assert d.claim(name="n1", node_id=1, cluster_id=7)[0] is True
    assert d.claim(name="n1", node_id=1, cluster_id=7)[0] is False
    # A member that joined knows its cluster only from its directory.
    assert d.claim(name="n1", node_id=1, cluster_id=0)[1]["cluster_id"] == 7
    assert d.cluster_id() == 7
    with pytest.raises(DataDirError, match="belongs to member"):
        d.claim(name="n2", node_id=2, cluster_id=7)
    with pytest.raises(DataDirError, match="another cluster"):
        d.claim(name="n1", node_id=1, cluster_id=8)
    d.mark_removed()
    with pytest.raises(DataDirError, match="was removed"):
        d.claim(name="n1", node_id=1, cluster_id=7)


def test_a_foreign_or_damaged_directory_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "something.txt").write_text("not ours")
    with pytest.raises(DataDirError, match="not empty"):
        DataDir(foreign).claim(name="n1", node_id=1, cluster_id=7)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "member.json").write_text("{not json")
    with pytest.raises(DataDirError, match="unreadable"):
        DataDir(damaged).claim(name="n1", node_id=1, cluster_id=7)


def test_cluster_ids_differ_by_token_names_and_addresses(tmp_path: Path) -> None:
    def cid(initial: str, token: str = "quorumkv") -> int:
        return NodeConfig(name="n1", data_dir=tmp_path, cluster_token=token,
                          initial_cluster=parse_initial_cluster(initial)).cluster_id
    base = "n1=127.0.0.1:7001,n2=127.0.0.1:7002"
    assert cid(base) == cid("n2=127.0.0.1:7002,n1=127.0.0.1:7001")  # order does not matter
    assert len({cid(base), cid(base, "other"), cid("n1=127.0.0.1:7001,n3=127.0.0.1:7002"),
                cid("n1=127.0.0.1:8001,n2=127.0.0.1:8002")}) == 4
    assert NodeConfig(name="n4", data_dir=tmp_path, join=("127.0.0.1:7101",)).cluster_id == 0


def test_only_a_leaders_own_member_list_proves_a_removal() -> None:


    def answer(leader: str | None, members: list[tuple[int, str]], cid: int = 7
               ) -> dict[str, object]:
        return {"leader": leader, "cluster_id": cid,
                "members": [{"id": i, "name": n} for i, n in members]}

    me = 1
    full = [(1, "n1"), (2, "n2"), (3, "n3")]
    without_me = [(2, "n2"), (3, "n3")]
    # A member that just joined (or lags) lists nobody, or an old view: no proof.
    assert not removed_by("n2", answer("n3", []), node_id=me, cluster_id=7)
    assert not removed_by("n2", answer("n3", without_me), node_id=me, cluster_id=7)
    # The leader's own list is: with us, we are a member; without us, removed.
    assert not removed_by("n3", answer("n3", full), node_id=me, cluster_id=7)
    assert removed_by("n3", answer("n3", without_me), node_id=me, cluster_id=7)
    # ... unless it is another cluster's, or it does not even list itself.
    assert not removed_by("n3", answer("n3", without_me, cid=8), node_id=me, cluster_id=7)
    assert not removed_by("n3", answer("n3", []), node_id=me, cluster_id=7)
