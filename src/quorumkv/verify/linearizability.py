"""Does a key-value history have a linearization? A checker for recorded runs.

Theory of operation
-------------------
A history is linearizable if every operation can be given a single point in
time, inside its interval, such that executing the operations one at a time
in that order on a plain key-value map reproduces every output the clients
saw (Herlihy & Wing). Finding that order is a search; this module follows
Wing & Gong's depth-first search with the refinements Lowe described and that
Porcupine (Go) made practical:

* **P-compositionality.** A history over independent keys is linearizable iff
  each key's sub-history is, so each key is searched on its own and the cost
  is a sum over keys rather than a product.

* **Events as a linked list.** Each key's calls and returns are sorted by
  time. An operation may go next only if its call precedes the earliest return
  of any operation not yet linearized: reaching a return while scanning means
  that operation's deadline passed, so the search backtracks. Linearizing an
  operation unlinks its call and return; backtracking relinks them in reverse
  order (dancing links), so both are O(1).

* **Memoisation (Lowe).** A configuration is the set of linearized operations
  (a Python ``int`` used as a bitset) plus the model state. Two search paths
  that reach the same configuration have the same future, so each is explored
  once: the factorial search becomes one bounded by the number of distinct
  configurations.

Memoisation alone still explores every interleaving of concurrent writes
before it can report a violation late in a history, so the search also skips
branches that can only succeed if a sibling it does try succeeds as well:

* **Reads go first.** A read that fits the current state is linearized at
  once with no alternative tried: moving a read earlier, within its interval,
  never invalidates a linearization, since it changes no state.
* **Interchangeable writes.** Of several candidate writes with the same effect
  only one is tried: for known ops the one that must return first, for unknown
  ops the one called last. An exchange argument shows the others add nothing.

Uncertain outcomes
------------------
A ``fail`` operation is dropped, and so is an ``unknown`` get: a read whose
answer was lost constrains nothing. An ``unknown`` put or cas has no deadline
(its return is at infinity), so it stays a candidate until the end, and the
search succeeds once every *known* operation is linearized: whatever unknown
operations are left simply never took effect. An unknown cas is only ever
linearized as a successful swap, since a failed one is the same as omitting it.

Unknown operations multiply configurations (every subset of them spent is a
different one), which is what makes chaos histories expensive. Four measures
contain that:

* an unknown op is never spent right before a put, which would hide its
  effect; leaving it out instead reaches the same state with more in hand;
* unknown ops with the same effect are counted rather than named once they
  are callable (see ``_Partition._unknown_classes``);
* a configuration is skipped if one with the same known operations and state
  was reached having spent no more unknown operations of any kind: an unknown
  operation may always be left out, so the thriftier configuration's search
  covers the other's;
* known operations are tried before unknown ones, so that the thriftier
  configuration tends to be the one reached first.

Operations whose times are equal (a return and a call at the same tick) are
treated as concurrent: the checker never infers an order the clock did not
show.

The search is iterative and bounded by ``max_states`` configurations reached
over the whole history. Cutting it off proves nothing, so it yields
``ok=False`` with ``timed_out=True``: the checker never calls a history
linearizable without having found the linearization. Memory is on the order
of a hundred bytes per configuration kept, plus the bitset's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from quorumkv.verify.history import Op

__all__ = ["CheckResult", "check_kv"]

# Model steps, precomputed per operation so the inner loop compares small ints.
_PUT = 0  # always applies; state becomes the new value
_GET = 1  # applies iff state == arg
_SWAP = 2  # cas that swapped (or might have): applies iff state == arg; state becomes new
_NO_SWAP = 3  # cas that reported False: applies iff state != arg

_ABSENT = 0  # interned model state for "no such key"

_SHOWN = 8  # ops listed in a reason before eliding the rest


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict on a history.

    ``ok`` is True only when a linearization of every key was found. On a
    violation, ``key`` is the first key (in order of first appearance) whose
    sub-history has none; ``linearized`` is the longest linearizable prefix the
    search reached for it and ``pending`` the operations that could have gone
    next at that point and did not fit. ``ops_checked`` counts operations that
    entered a search, up to the key that decided the verdict (``fail`` ops and
    ``unknown`` gets are dropped first).
    ``states_explored`` counts configurations reached, including those skipped
    as already covered: the quantity ``max_states`` bounds.
    """

    ok: bool
    key: str | None
    reason: str
    ops_checked: int
    states_explored: int = 0
    timed_out: bool = False
    linearized: tuple[Op, ...] = ()
    pending: tuple[Op, ...] = ()


def check_kv(ops: Sequence[Op], *, max_states: int = 5_000_000) -> CheckResult:
    """Check that ``ops`` is linearizable for a map of independent registers."""
    by_key: dict[str, list[Op]] = {}
    seen_ids: set[int] = set()
    for op in ops:
        if op.id in seen_ids:
            raise ValueError(f"op id {op.id} appears twice in the history")
        seen_ids.add(op.id)
        by_key.setdefault(op.key, []).append(op)

    checked = 0
    states = 0
    for key, key_ops in by_key.items():
        part = _Partition(key_ops)
        checked += len(part.ops)
        impossible = part.impossible_read()
        if impossible is not None:
            reason = (
                f"key {key!r} is not linearizable: {_describe(impossible)} observed "
                f"{_value(_required(impossible))}, which no operation on this key wrote"
            )
            return CheckResult(False, key, reason, checked, states, pending=(impossible,))
        search = _Search(part, max_states - states)
        found = search.run()
        states += search.states
        if not found:
            return _violation(part, search, checked, states, max_states)
    return CheckResult(
        True, None, f"linearizable: {checked} ops over {len(by_key)} keys", checked, states
    )


class _Partition:
    """One key's operations, reduced to what the search needs, as parallel lists."""

    def __init__(self, key_ops: list[Op]) -> None:
        ops = [
            op
            for op in key_ops
            if op.status == "ok" or (op.status == "unknown" and op.kind != "get")
        ]
        ops.sort(key=lambda op: (op.call, op.id))
        self.key = key_ops[0].key
        self.ops = ops
        self.values: dict[bytes, int] = {}
        self.step: list[int] = []
        self.arg: list[int] = []
        self.new: list[int] = []
        self.known: list[bool] = []
        self.bit: list[int] = []  # a known op's index in the known bitset
        n_known = 0
        for op in ops:
            known = op.status == "ok"
            self.known.append(known)
            self.bit.append(n_known if known else -1)
            n_known += known
            self.new.append(self._intern(op.value))
            if op.kind == "put":
                self.step.append(_PUT)
                self.arg.append(_ABSENT)
            elif op.kind == "get":
                assert not isinstance(op.output, bool)
                self.step.append(_GET)
                self.arg.append(self._intern(op.output))
            else:
                self.step.append(_NO_SWAP if op.output is False else _SWAP)
                self.arg.append(self._intern(op.expected))
        self.n_known = n_known
        self.twin = self._twins()
        self.uclass, self.ubase = self._unknown_classes()

    def _effect(self, i: int) -> tuple[int, int, int]:
        return (self.step[i], self.arg[i], self.new[i])

    def _twins(self) -> list[int]:
        """Link writes with the same effect, which differ only in their times.

        An unknown op links to the next unknown one by call, a known write to
        the previous known one by return, so the search can always take the
        one that leaves the others the most room (see ``_Search.run``).
        """
        n = len(self.ops)
        twin = [-1] * n
        later: dict[tuple[int, int, int], int] = {}
        for i in reversed(range(n)):
            if not self.known[i]:
                twin[i] = later.get(self._effect(i), -1)
                later[self._effect(i)] = i
        writes = [i for i in range(n) if self.known[i] and self.step[i] in (_PUT, _SWAP)]
        writes.sort(key=lambda i: (self.ops[i].ret, i))
        earlier: dict[tuple[int, int, int], int] = {}
        for i in writes:
            twin[i] = earlier.get(self._effect(i), -1)
            earlier[self._effect(i)] = i
        return twin

    def _unknown_classes(self) -> tuple[list[int], list[int]]:
        """Group unknown ops by effect; give each group a run of bits.

        Once the search is past their calls, the unknown ops of a group are a
        pool: which of them were spent no longer matters, only how many. Spending
        one sets the next bit of its group's run, so two configurations that
        spent the same number from each group get the same bitset, and "no more
        spent from any group" is plain inclusion of bitsets.
        """
        uclass = [-1] * len(self.ops)
        sizes: dict[tuple[int, int, int], int] = {}
        index: dict[tuple[int, int, int], int] = {}
        for i in range(len(self.ops)):
            if not self.known[i]:
                effect = self._effect(i)
                uclass[i] = index.setdefault(effect, len(index))
                sizes[effect] = sizes.get(effect, 0) + 1
        ubase: list[int] = []
        offset = 0
        for effect in index:  # insertion order is class order
            ubase.append(offset)
            offset += sizes[effect]
        return uclass, ubase

    def _intern(self, value: bytes | None) -> int:
        if value is None:
            return _ABSENT
        return self.values.setdefault(value, len(self.values) + 1)

    def impossible_read(self) -> Op | None:
        """A known op that needs a value no op on this key could have written.

        The search would find this too, but only after exhausting every
        configuration before it; catching it first is cheap and names the
        culprit directly.
        """
        written = {self.new[i] for i, s in enumerate(self.step) if s in (_PUT, _SWAP)}
        written.add(_ABSENT)
        for i, op in enumerate(self.ops):
            if self.known[i] and self.step[i] in (_GET, _SWAP) and self.arg[i] not in written:
                return op
        return None


_Frame = tuple[int, int, int, int, int | float, bool]
"""A linearized op's call node; the state, kb, ub and deadline before it; forced."""


class _Search:
    """Wing & Gong's search with Lowe's memoisation, over one partition.

    The events live in two doubly linked lists over one pair of arrays. The
    main list holds the known ops' calls and returns in time order; the side
    list holds the unknown ops' calls, which have no return. Scanning the main
    list first tries known ops before unknown ones: the search then tends to
    reach a configuration with fewer unknown ops spent before one with more,
    and the smaller set prunes the larger (see ``admit``) instead of the other
    way round.

    Node numbers: op ``i``'s call is ``2i + 1`` and its return ``2i + 2``, so
    calls are odd; the sentinels are even: ``0`` heads the main list and
    ``2n + 2`` ends it, ``2n + 4`` heads the side list and ``2n + 6`` ends it.
    """

    def __init__(self, part: _Partition, budget: int) -> None:
        self.part = part
        self.budget = budget
        self.states = 0
        self.timed_out = False
        # The deepest point reached (most known ops linearized), for the report.
        self.best_known = -1
        self.best_path: list[int] = []
        self.best_state = _ABSENT
        self.best_kb = 0

    def _links(self) -> tuple[list[int], list[int]]:
        ops = self.part.ops
        n = len(ops)
        events: list[tuple[int | float, int, int]] = []
        side: list[int] = []
        for i, op in enumerate(ops):
            if op.ret is None:
                side.append(2 * i + 1)  # ops are already in call order
            else:
                # Calls sort before returns at equal times: equal means concurrent.
                events.append((op.call, 0, 2 * i + 1))
                events.append((op.ret, 1, 2 * i + 2))
        events.sort()
        size = 2 * n + 7
        nxt = [0] * size
        prv = [0] * size
        for head, nodes, tail in (
            (0, [node for _, _, node in events], 2 * n + 2),
            (2 * n + 4, side, 2 * n + 6),
        ):
            last = head
            for node in [*nodes, tail]:
                nxt[last] = node
                prv[node] = last
                last = node
        return nxt, prv

    def run(self) -> bool:
        part = self.part
        remaining = part.n_known
        if remaining == 0:
            return True
        nxt, prv = self._links()
        side_head = 2 * len(part.ops) + 4
        side_tail = side_head + 2
        step, arg, new, known, bit = part.step, part.arg, part.new, part.known, part.bit
        twin, uclass, ubase = part.twin, part.uclass, part.ubase
        spent = [0] * len(ubase)  # unknown ops spent per class
        taken = [False] * len(part.ops)  # unknown ops unlinked from the side list
        call_at = [op.call for op in part.ops]
        ret_at = [0 if op.ret is None else op.ret for op in part.ops]
        budget = self.budget
        # (known bitset, state) -> the unknown bitsets reached with it, kept as an
        # antichain under inclusion: an int for the usual single entry, else a list.
        cache: dict[tuple[int, int], int | list[int]] = {}

        def admit(kb: int, state: int, ub: int) -> bool:
            """Record a configuration unless one at least as promising was seen.

            Having spent a subset of another's unknown ops, with the same known
            ops and state, is at least as promising: an unknown op has no
            deadline and may always be left out, so every completion of the
            larger set is a completion of the smaller.
            """
            key = (kb, state)
            seen = cache.get(key)
            if seen is None:
                cache[key] = ub
            elif isinstance(seen, int):
                if seen & ub == seen:
                    return False
                cache[key] = ub if ub & seen == ub else [seen, ub]
            else:
                for n, u in enumerate(seen):
                    if u & ub == u:
                        # Move to front: a set that prunes once tends to prune again.
                        seen[n] = seen[0]
                        seen[0] = u
                        return False
                seen[:] = [u for u in seen if u & ub != ub]
                seen.append(ub)
            return True

        states = 0
        state = _ABSENT
        kb = 0  # known ops linearized
        ub = 0  # unknown ops spent, in the per-class encoding of _Partition
        deadline: int | float = 0  # the earliest pending return
        stack: list[_Frame] = []
        fresh = True  # at a configuration not scanned yet
        entry = 0  # the scan's cursor; 0 once nothing is left to try here
        while True:
            if fresh:
                # A read that fits now may as well go now: its call precedes every
                # pending deadline and it leaves the state as it found it, so any
                # linearization that places it later stays valid with it moved
                # here. It is the only branch worth taking, and if it leads
                # nowhere, neither does this configuration.
                fresh = False
                e = nxt[0]
                while e & 1:
                    i = e >> 1
                    s = step[i]
                    if (s == _GET and state == arg[i]) or (s == _NO_SWAP and state != arg[i]):
                        break
                    e = nxt[e]
                if e & 1:
                    if states == budget:
                        return self._cut_off(states, stack, state, kb, remaining)
                    states += 1
                    nkb = kb | (1 << bit[e >> 1])
                    entry = 0
                    if admit(nkb, state, ub):
                        stack.append((e, state, kb, ub, deadline, True))
                        kb = nkb
                        _unlink(nxt, prv, e)
                        _unlink(nxt, prv, e + 1)
                        remaining -= 1
                        if remaining == 0:
                            self.states = states
                            return True
                        fresh = True
                        continue
                else:
                    deadline = ret_at[(e >> 1) - 1]
                    entry = nxt[0]
            # Try each write that may go next: known ones from the main list up to
            # its first return, then unknown ones called by that return.
            stuck = entry != 0
            # An unknown op straight before a put is wasted: the put hides its
            # effect, and leaving the unknown op out reaches the same state with
            # one more op in hand. The sibling branch without it covers this one.
            puts_fit = not stack or known[stack[-1][0] >> 1]
            while entry:
                if not entry & 1:
                    entry = nxt[side_head] if entry != side_tail else 0
                    continue
                i = entry >> 1
                s = step[i]
                if (s == _PUT and puts_fit) or (s == _SWAP and state == arg[i]):
                    ns = new[i]
                else:
                    # No read fits here, or the scan above would have taken it.
                    # (Nor a put, if puts_fit is False.)
                    entry = nxt[entry]
                    continue
                is_known = known[i]
                if is_known:
                    # Of interchangeable known writes that may go now, take the
                    # earliest-returning: in any linearization placing a later-
                    # returning one here, the two can trade places. (Twins that
                    # return before the deadline are already placed.)
                    j = twin[i]
                    while j >= 0 and ret_at[j] >= deadline:
                        if call_at[j] <= deadline and not kb >> bit[j] & 1:
                            break
                        j = twin[j]
                    else:
                        j = -1
                    if j >= 0:
                        entry = nxt[entry]
                        continue
                    nkb = kb | (1 << bit[i])
                    nub = ub
                else:
                    if call_at[i] > deadline:
                        break
                    # Of interchangeable unknown ops, spend the latest-called: an
                    # earlier one can stand in wherever a later one would have gone.
                    j = twin[i]
                    while j >= 0 and taken[j]:
                        j = twin[j]
                    if j >= 0 and call_at[j] <= deadline:
                        entry = nxt[entry]
                        continue
                    c = uclass[i]
                    nkb = kb
                    nub = ub | (1 << (ubase[c] + spent[c]))
                if states == budget:
                    return self._cut_off(states, stack, state, kb, remaining)
                states += 1
                if not admit(nkb, ns, nub):
                    entry = nxt[entry]
                    continue
                stack.append((entry, state, kb, ub, deadline, False))
                state, kb, ub = ns, nkb, nub
                _unlink(nxt, prv, entry)
                if is_known:
                    _unlink(nxt, prv, entry + 1)
                    remaining -= 1
                    if remaining == 0:
                        self.states = states
                        return True
                else:
                    taken[i] = True
                    spent[uclass[i]] += 1
                fresh = True
                break
            if fresh:
                continue
            if stuck:
                # The earliest pending return passed with its op unplaced.
                depth = part.n_known - remaining
                if depth > self.best_known:
                    self._note_best(stack, state, kb, depth)
            # Backtrack. Undoing a forced read means its configuration failed too,
            # so keep undoing until a branch that has untried siblings.
            while True:
                if not stack:
                    self.states = states
                    return False
                entry, state, kb, ub, deadline, was_forced = stack.pop()
                i = entry >> 1
                if known[i]:
                    _relink(nxt, prv, entry + 1)
                    remaining += 1
                else:
                    taken[i] = False
                    spent[uclass[i]] -= 1
                _relink(nxt, prv, entry)
                if not was_forced:
                    break
            entry = nxt[entry]

    def _cut_off(
        self, states: int, stack: list[_Frame], state: int, kb: int, remaining: int
    ) -> bool:
        self.states = states
        self.timed_out = True
        depth = self.part.n_known - remaining
        if depth > self.best_known:
            self._note_best(stack, state, kb, depth)
        return False

    def _note_best(self, stack: list[_Frame], state: int, kb: int, depth: int) -> None:
        self.best_known = depth
        self.best_path = [frame[0] >> 1 for frame in stack]
        self.best_state = state
        self.best_kb = kb


def _unlink(nxt: list[int], prv: list[int], node: int) -> None:
    p, q = prv[node], nxt[node]
    nxt[p] = q
    prv[q] = p


def _relink(nxt: list[int], prv: list[int], node: int) -> None:
    # Dancing links: an unlinked node keeps its neighbours, so undoing
    # unlinks in reverse order restores the list exactly.
    nxt[prv[node]] = node
    prv[nxt[node]] = node


def _violation(
    part: _Partition, search: _Search, checked: int, states: int, max_states: int
) -> CheckResult:
    ops = part.ops
    prefix = tuple(ops[i] for i in search.best_path)
    in_prefix = set(search.best_path)
    state = _unintern(part, search.best_state)
    waiting = [
        ops[i] for i in range(len(ops)) if part.known[i] and not search.best_kb >> part.bit[i] & 1
    ]
    lines: list[str] = []
    if search.timed_out:
        lines.append(
            f"key {part.key!r}: search cut off after {states} configurations "
            f"(max_states={max_states}); linearizability NOT established."
        )
    else:
        lines.append(
            f"key {part.key!r} is not linearizable: at most {search.best_known} of "
            f"{part.n_known} completed ops can be ordered."
        )
    lines.append(
        f"Longest linearizable prefix found: {len(prefix)} ops, "
        f"leaving the value {_value(state)}" + (":" if prefix else ".")
    )
    if len(prefix) > _SHOWN:
        lines.append(f"  ... {len(prefix) - _SHOWN} earlier ops")
    lines.extend(f"  {_describe(op)}" for op in prefix[-_SHOWN:])
    pending: tuple[Op, ...] = ()
    if waiting and not search.timed_out:
        due = min(waiting, key=lambda op: (op.ret, op.call, op.id))
        deadline = due.ret
        assert deadline is not None
        candidates = [i for i in range(len(ops)) if i not in in_prefix and ops[i].call <= deadline]
        # The op that ran out of time first, then other completed ops: unknown
        # ops are rarely the culprit and would crowd them out of the listing.
        candidates.sort(key=lambda i: (ops[i] is not due, not part.known[i], i))
        pending = tuple(ops[i] for i in candidates)
        lines.append(
            f"{_describe(due)} had to take effect by t={due.ret}, but none of the "
            f"{len(pending)} ops pending then can go next:"
        )
        for op in pending[:_SHOWN]:
            lines.append(f"  {_describe(op)}: {_why_not(op, state)}")
        if len(pending) > _SHOWN:
            lines.append(f"  ... and {len(pending) - _SHOWN} more")
    return CheckResult(
        False,
        part.key,
        "\n".join(lines),
        checked,
        states,
        timed_out=search.timed_out,
        linearized=prefix,
        pending=pending,
    )


def _why_not(op: Op, state: bytes | None) -> str:
    if op.kind == "get" and op.output != state:
        return f"read {_value(_required(op))} but the value was {_value(state)}"
    if op.kind == "cas" and op.output is True and op.expected != state:
        return f"swapped from {_value(op.expected)} but the value was {_value(state)}"
    if op.kind == "cas" and op.output is None and op.expected != state:
        return f"could only swap from {_value(op.expected)}; the value was {_value(state)}"
    if op.kind == "cas" and op.output is False and op.expected == state:
        return f"did not swap, yet the value was the expected {_value(state)}"
    return "fits here, but every order after it reaches a dead end"


def _required(op: Op) -> bytes | None:
    if op.kind == "cas":
        return op.expected
    assert not isinstance(op.output, bool)
    return op.output


def _unintern(part: _Partition, state: int) -> bytes | None:
    for value, n in part.values.items():
        if n == state:
            return value
    return None


def _value(v: bytes | None, limit: int = 24) -> str:
    if v is None:
        return "<absent>"
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(op: Op) -> str:
    if op.kind == "put":
        what = f"put {_value(op.value)}"
    elif op.kind == "get":
        assert not isinstance(op.output, bool)
        what = f"get -> {_value(op.output)}"
    else:
        outcome = {True: "swapped", False: "not swapped", None: "outcome unknown"}[
            op.output if isinstance(op.output, bool) else None
        ]
        what = f"cas {_value(op.expected)} -> {_value(op.value)} ({outcome})"
    end = "?" if op.ret is None else op.ret
    return f"#{op.id} client {op.client} {what} [{op.call}, {end}]"
