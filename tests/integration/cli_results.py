"""Checks on a finished `quorumkv` command (a subprocess), shared by the CLI tests."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def failed(result: subprocess.CompletedProcess[str], code: str) -> str:
    """A clean failure: exit code 1 and one ``error (CODE): ...`` line, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert f"error ({code}):" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr
