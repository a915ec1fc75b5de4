"""The consensus core stays pure: no I/O, no clocks, no threads, no global randomness.

This is what makes a whole cluster replayable from one seed; the test fails
the moment a forbidden import creeps into ``quorumkv.raft``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import quorumkv.raft

FORBIDDEN = {"asyncio", "socket", "os", "time", "threading", "selectors", "subprocess",
             "multiprocessing", "io", "pathlib", "shutil", "signal", "datetime", "uuid",
             "secrets", "logging"}

RAFT_DIR = Path(quorumkv.raft.__file__).parent


def _modules() -> list[Path]:
    files = sorted(RAFT_DIR.glob("*.py"))
    assert len(files) >= 10
    return files


def test_the_core_imports_no_io_clock_or_thread_module() -> None:
    offenders = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.name}: imports {name}")
    assert not offenders, offenders


def test_randomness_only_comes_from_an_injected_random_instance() -> None:
    offenders = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "random":
                bad = [a.name for a in node.names if a.name != "Random"]
                if bad:
                    offenders.append(f"{path.name}: from random import {bad}")
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "random" and node.attr != "Random"):
                offenders.append(f"{path.name}:{node.lineno}: random.{node.attr}")
    assert not offenders, offenders
