"""The state machine must be deterministic (STYLE.md, rule 1): it reads no clock, draws no
random number, starts no thread and touches no socket. Its only I/O is its own directory:
LMDB, plus pathlib/shutil/tempfile to create, copy and remove store directories."""

from __future__ import annotations

import ast
from pathlib import Path

import quorumkv.kv

FORBIDDEN = {"asyncio", "socket", "os", "time", "random", "threading", "datetime", "selectors",
             "subprocess", "secrets", "uuid"}


def imported_modules(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_kv_imports_nothing_nondeterministic() -> None:
    package = Path(quorumkv.kv.__file__).parent
    sources = sorted(package.glob("*.py"))
    assert sources
    for path in sources:
        bad = imported_modules(path.read_text()) & FORBIDDEN
        assert not bad, f"{path.name} imports {sorted(bad)}"
