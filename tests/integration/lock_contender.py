"""A lock contender process for test_recipes.py: takes a lock again and again and records
each hold in a history file shared with the other contenders.

::

    python lock_contender.py --endpoints A,B,C --history FILE --stop-file FILE
                             [--name L] [--ttl 3] [--hold 0.05] [--hold-forever]

Each record is one line, written with one ``write`` to a file opened with
O_APPEND and fsynced before the contender goes on, so the file's line order
is the order of the writes. Times are ``time.monotonic_ns()``, which is one
clock for every process of the machine::

    enter <token> <pid> <t_enter>
    exit <token> <pid> <t_exit> <valid_until> <lost>    lost: 1 if the lock said so
    error <pid> <t> <message>

``valid_until`` is the lock's own bound on its safety (``Lock.valid_until``).
The contender stops once the stop file exists (or after a cap of two
minutes). With ``--hold-forever`` it takes the lock once, records the enter
and then sleeps until it is killed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from quorumkv.client import BlockingLock, Client
from quorumkv.errors import QuorumKVError

CAP_SECONDS = 120.0


def record(fd: int, line: str) -> None:
    os.write(fd, (line + "\n").encode())
    os.fsync(fd)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--history", required=True)
    parser.add_argument("--stop-file", default=None)
    parser.add_argument("--name", default="L")
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--hold", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--hold-forever", action="store_true")
    args = parser.parse_args()
    pid = os.getpid()
    fd = os.open(args.history, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    cap = time.monotonic() + CAP_SECONDS

    def stopping() -> bool:
        return time.monotonic() > cap or (args.stop_file is not None
                                          and os.path.exists(args.stop_file))

    with Client(args.endpoints.split(","), timeout=args.timeout) as client:
        while not stopping():
            lock = BlockingLock(client, args.name, ttl=args.ttl)
            try:
                token = lock.acquire(timeout=10.0)
            except QuorumKVError as e:
                record(fd, f"error {pid} {time.monotonic_ns()} acquire: {e.code}: {e.message}")
                time.sleep(0.05)
                continue
            record(fd, f"enter {token} {pid} {time.monotonic_ns()}")
            if args.hold_forever:
                while True:
                    time.sleep(60)
            time.sleep(args.hold)
            t_exit = time.monotonic_ns()
            valid_until = int(lock.valid_until * 1e9)
            lost = lock.lost
            record(fd, f"exit {token} {pid} {t_exit} {valid_until} {int(lost)}")
            try:
                lock.release()
            except QuorumKVError as e:  # the lease expires by itself
                record(fd, f"error {pid} {time.monotonic_ns()} release: {e.code}: {e.message}")
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
