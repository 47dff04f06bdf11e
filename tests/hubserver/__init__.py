"""A Hub-protocol HTTP server for tests, and helpers to point the real clients at it.

The publishing tests (``tests/builder/test_hub*.py``) run the real ``huggingface_hub`` and
``datasets`` clients against this server instead of huggingface.co, which cannot be reached
from CI. It implements the calls those clients make to create repositories, commit files
(regular and git-LFS), tag, list refs and commits, and download with ``resolve`` URLs,
with the Hub's auth rules and error headers, and counts the bytes each request sent. See
``server.py`` (HTTP, auth, faults, outages, byte counts), ``routes.py`` (URLs), ``api.py`` (API
endpoints), ``transfer.py`` (LFS uploads, downloads) and ``store.py`` (repositories on disk).

The clients read ``HF_*`` variables when they are imported, so:

* in-process tests call :func:`configure_process_env` before anything imports
  ``huggingface_hub`` or ``datasets`` (ideally at the top of ``tests/conftest.py``) and use
  :func:`shared_server`, which listens on the port written into ``HF_ENDPOINT``;
* tests that need a fresh client process build its environment with :func:`client_env`
  and run it with :func:`run_client`.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.hubserver.server import (
    DEFAULT_ORGS,
    DEFAULT_TOKENS,
    HubServer,
    RequestRecord,
    running_hub,
)
from tests.hubserver.store import HubError

__all__ = [
    "DEFAULT_ORGS",
    "DEFAULT_TOKENS",
    "ALICE",
    "BOB",
    "HubError",
    "HubServer",
    "RequestRecord",
    "client_env",
    "configure_process_env",
    "run_client",
    "running_hub",
    "shared_server",
]

ALICE = "hf_test_alice_0123456789"  # token of user alice (member of org upft-org)
BOB = "hf_test_bob_9876543210"  # token of user bob
_PORT_VARIABLE = "UPFT_TEST_HUB_PORT"
_shared: HubServer | None = None


def _is_hub_setting(key: str) -> bool:
    return key.startswith(("HF_", "HUGGING_FACE_", "HUGGINGFACE_"))


def client_env(
    endpoint: str, home: str | Path, token: str | None = None, base: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment for a client process that talks to the test Hub at ``endpoint`` only.

    Drops any inherited ``HF_*`` settings and tokens so a developer's login never leaks in;
    ``home`` becomes ``HF_HOME`` (caches, token file).
    """
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not _is_hub_setting(k) and k != _PORT_VARIABLE
    }
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
    )
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def configure_process_env() -> int:
    """Point this process's future Hub clients at a test Hub port; return that port.

    Idempotent. Must run before ``huggingface_hub`` / ``datasets`` are imported, because
    both read ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_DISABLE_XET`` at import time.

    An environment already prepared the same way (``HF_ENDPOINT`` on a 127.0.0.1 port with
    Xet off and a private ``HF_HOME``, as ``tests/conftest.py`` does) is adopted as is.
    """
    if _PORT_VARIABLE in os.environ:
        return int(os.environ[_PORT_VARIABLE])
    prepared = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/?", os.environ.get("HF_ENDPOINT", ""))
    if prepared and os.environ.get("HF_HUB_DISABLE_XET") == "1" and os.environ.get("HF_HOME"):
        os.environ[_PORT_VARIABLE] = prepared.group(1)
        return int(prepared.group(1))
    if "huggingface_hub" in sys.modules or "datasets" in sys.modules:
        raise RuntimeError(
            "huggingface_hub or datasets was imported before the test Hub environment was set;"
            " call tests.hubserver.configure_process_env() at the top of tests/conftest.py"
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    home = tempfile.mkdtemp(prefix="hf-home-")
    atexit.register(shutil.rmtree, home, True)
    wanted = client_env(f"http://127.0.0.1:{port}", home)
    for key in [k for k in os.environ if k not in wanted]:
        if _is_hub_setting(key):
            del os.environ[key]
    os.environ.update(wanted)
    os.environ[_PORT_VARIABLE] = str(port)
    return port


def shared_server() -> HubServer:
    """The process-wide test Hub on the port from :func:`configure_process_env` (started once)."""
    global _shared
    if _shared is None:
        _shared = HubServer(port=configure_process_env()).start()
        atexit.register(_shared.stop)
    return _shared


def run_client(
    code: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` with ``env`` (see :func:`client_env`), capturing its output."""
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )
