"""Simulated clients: closed-loop put/get/cas with timeouts, redirects and an honest history.

A client records an operation as ``ok`` only on a definite answer, ``fail``
only when it knows the write never entered a log that could commit it
(refused by a non-leader, or overwritten at its index), and ``unknown`` when
it timed out after some node accepted the proposal.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from quorumkv.sim.state_machine import cas_command, put_command

if TYPE_CHECKING:
    from quorumkv.sim.cluster import SimCluster


class SimClient:
    def __init__(self, cluster: SimCluster, client_id: int, rng: random.Random) -> None:
        self.cluster = cluster
        self.id = client_id
        self._rng = rng
        self._seq = 0
        self._op: int | None = None
        self._attempt = 0
        self._proposed = False
        self._kind = ""
        self._key = ""
        self._value: bytes | None = None
        self._expected: bytes | None = None
        self._deadline = 0
        self._leader_hint = 0
        self._seen: dict[str, bytes | None] = {}
        self.stopped = False
        self.ok_since_heal = 0

    @property
    def busy(self) -> bool:
        return self._op is not None

    def start(self) -> None:
        self.cluster.loop.after(self._rng.randint(0, 20), self._next_op)

    def _next_op(self) -> None:
        if self.stopped or self._op is not None:
            return
        r = self._rng
        c = self.cluster
        self._seq += 1
        self._key = f"k{r.randrange(c.options.keys)}"
        roll = r.random()
        self._kind = "get" if roll < 0.4 else "put" if roll < 0.75 else "cas"
        self._value = f"c{self.id}-{self._seq}".encode() if self._kind != "get" else None
        self._expected = None
        if self._kind == "cas":
            self._expected = self._seen.get(self._key) if r.random() < 0.8 else None
        self._op = c.history.invoke(client=self.id, kind=self._kind,  # type: ignore[arg-type]
                                    key=self._key, value=self._value,
                                    expected=self._expected, time=c.loop.now)
        self._proposed = False
        self._deadline = c.loop.now + c.options.op_timeout_ms
        op = self._op
        c.loop.at(self._deadline, lambda: self._on_timeout(op))
        self._attempt_at(self._pick_target())

    def _pick_target(self) -> int:
        members = self.cluster.live_member_ids()
        if self._leader_hint in members:
            return self._leader_hint
        return self._rng.choice(members) if members else 1

    def _attempt_at(self, node_id: int) -> None:
        c = self.cluster
        self._attempt += 1
        attempt = self._attempt
        node = c.nodes.get(node_id)

        def reply(status: str, output: object, hint: int) -> None:
            c.loop.after(self._rng.randint(1, 4),
                         lambda: self._on_reply(attempt, status, output, hint))

        def deliver() -> None:
            if attempt != self._attempt or self._op is None:
                return  # the operation ended (timed out) while this request travelled
            if node is None:
                reply("retry", None, 0)
            elif self._kind == "get":
                node.client_read(self._key, reply)
            else:
                assert self._value is not None
                cmd = (put_command(self._key, self._value) if self._kind == "put"
                       else cas_command(self._key, self._expected, self._value))
                if node.up and node.raft is not None and node.raft.role.value == "leader":
                    self._proposed = True
                node.client_write(cmd, reply)

        c.loop.after(self._rng.randint(1, 4), deliver)

    def _on_reply(self, attempt: int, status: str, output: object, hint: int) -> None:
        if attempt != self._attempt or self._op is None:
            return
        c = self.cluster
        if status == "ok":
            if self._kind == "get":
                assert output is None or isinstance(output, bytes)
                self._seen[self._key] = output
                c.history.ok(self._op, time=c.loop.now, output=output)
            elif self._kind == "cas":
                assert isinstance(output, bool)
                if output:
                    self._seen[self._key] = self._value
                c.history.ok(self._op, time=c.loop.now, output=output)
            else:
                self._seen[self._key] = self._value
                c.history.ok(self._op, time=c.loop.now)
            if c.healed:
                self.ok_since_heal += 1
            self._finish()
            return
        if status == "fail":
            c.history.fail(self._op, time=c.loop.now)
            self._finish()
            return
        # not_leader / retry: nothing was proposed by that node; try elsewhere.
        self._leader_hint = hint
        target = hint if hint and status == "not_leader" else self._random_other()
        c.loop.after(self._rng.randint(2, 15), lambda: self._retry(attempt, target))

    def _retry(self, attempt: int, target: int) -> None:
        if attempt == self._attempt and self._op is not None:
            self._attempt_at(target)

    def _random_other(self) -> int:
        members = self.cluster.live_member_ids()
        return self._rng.choice(members) if members else 1

    def _on_timeout(self, op: int) -> None:
        if self._op != op:
            return
        c = self.cluster
        if self._proposed or self._kind == "get":
            c.history.unknown(op)
        else:
            c.history.fail(op, time=c.loop.now)
        self._finish()

    def _finish(self) -> None:
        self._op = None
        self._attempt += 1
        if not self.stopped:
            self.cluster.loop.after(self._rng.randint(0, self.cluster.options.think_ms),
                                    self._next_op)
