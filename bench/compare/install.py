"""What the other systems need, installed on first use and left alone once there.

* etcd: Debian's ``etcd-server`` package (3.4.x, /usr/bin/etcd). Installing it
  may enable the package's own service; this harness never talks to it (its
  clusters use ports the kernel hands out and data under a temporary
  directory), so whether that service runs does not matter.
* PySyncObj and the etcd client: pinned in ``requirements-peers.txt`` and
  installed into ``bench/compare/.venv-peers``, a throwaway venv, so none of
  them (grpcio above all) ends up in the project's environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEER_VENV = HERE / ".venv-peers"
REQUIREMENTS = HERE / "requirements-peers.txt"
STAMP = PEER_VENV / ".installed"
ETCD_PACKAGE = "etcd-server"


class SetupError(Exception):
    """Something a system needs could not be installed; the message says what to do."""


def _run(args: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, check=False)


def ensure_etcd() -> str:
    found = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if found:
        return found
    if os.geteuid() != 0:
        raise SetupError(f"etcd is not installed: as root, apt-get install -y {ETCD_PACKAGE}")
    print(f"installing Debian's {ETCD_PACKAGE} ...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", ETCD_PACKAGE]
    done = _run(install, env=env)
    if done.returncode != 0:
        # A fresh machine has no package lists yet; fetch them only when needed.
        _run(["apt-get", "update", "-q"], env=env)
        done = _run(install, env=env)
    if done.returncode != 0 or not Path("/usr/bin/etcd").exists():
        raise SetupError(f"could not install {ETCD_PACKAGE}:\n{done.stdout[-2000:]}"
                         f"{done.stderr[-2000:]}")
    return "/usr/bin/etcd"


def _requirements_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def ensure_peer_venv() -> str:
    python = peer_python()
    digest = _requirements_digest()
    if python.exists() and STAMP.exists() and STAMP.read_text().strip() == digest:
        return str(python)
    print(f"installing the other systems' packages into {PEER_VENV} ...", file=sys.stderr,
          flush=True)
    if not python.exists():
        # The project's interpreter makes the venv, so both run the same Python.
        made = _run([sys.executable, "-m", "venv", str(PEER_VENV)])
        if made.returncode != 0:
            raise SetupError(f"could not create {PEER_VENV}:\n{made.stderr[-2000:]}")
    pip = _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                "-r", str(REQUIREMENTS)])
    if pip.returncode != 0:
        raise SetupError(f"could not install {REQUIREMENTS.name}:\n{pip.stdout[-2000:]}"
                         f"{pip.stderr[-2000:]}")
    STAMP.write_text(digest + "\n")
    return str(python)


def etcd_version(etcd: str) -> str:
    out = _run([etcd, "--version"]).stdout
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def peer_versions(python: str) -> dict[str, str]:
    """Versions of the packages in the peers' venv, as that interpreter sees them."""
    script = ("import importlib.metadata as m, json, platform\n"
              "names = ['pysyncobj', 'aetcd', 'grpcio', 'protobuf', 'msgpack']\n"
              "print(json.dumps({**{n: m.version(n) for n in names},"
              " 'python': platform.python_version()}))")
    done = _run([python, "-c", script])
    if done.returncode != 0:
        return {}
    versions: dict[str, str] = json.loads(done.stdout)
    return versions
