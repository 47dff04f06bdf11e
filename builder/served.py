"""Served models in recipes and eval configs: the ``model`` fields of ``backend: openai``, and
what the builder needs from them before sampling (tokenizer, decoding defaults, fingerprint).

Sits beside ``recipe.py`` and ``resolve.py``: :class:`ServedFields` is mixed into the recipe's
``ModelConfig`` and the eval config's ``ModelSection``; :func:`resolve_served` replaces
``models.resolve_model`` + ``resolve.resolve`` for a served build; the executor that samples is
``builder.served_executor``.

The sampling model's tokenizer is always needed: a prefix is L tokens of it, and the builder
votes, cuts and counts on those tokens (and re-tokenises the text of servers that return no ids).
It comes from ``model.tokenizer`` (a folder or Hub id), else from ``model.id`` when that is a
folder, an embedded model or a Hub id. Decoding values the recipe leaves empty come from the
generation config in that folder; without one they are left to the server's defaults (nothing
is sent) and the manifest says so (``decoding_sources: server``).

Fingerprint: where the server is and how it is reached (``base_url``, the key's variable,
concurrency, rate caps, timeouts, retries) does not change the samples, so, like the executor,
it is left out; the served name, the endpoint and the tokenizer are in.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from builder.errors import ModelError

logger = logging.getLogger(__name__)

SERVED_FIELDS = (
    "base_url",
    "served_name",
    "api_key_env",
    "tokenizer",
    "endpoint",
    "max_concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "request_timeout_s",
    "max_retries",
)
# The model section's settings of an engine in this process; a served model has none here.
ENGINE_FIELDS = (
    "dtype",
    "max_model_len",
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "cpu_kvcache_gib",
    "kv_block_size",
    "compile",
)
# How the server is reached, not what it samples: left out of fingerprints.
TRANSPORT_FIELDS = (
    "base_url",
    "api_key_env",
    "max_concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "request_timeout_s",
    "max_retries",
)


class ServedFields(BaseModel):
    """The ``model`` fields of ``backend: openai`` (ignored, and not written, otherwise)."""

    base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1"
    )
    served_name: str | None = Field(
        default=None, description="the model's name on the server; empty: model.id"
    )
    api_key_env: str | None = Field(
        default=None,
        description="NAME of the environment variable holding the key (never the key)",
    )
    tokenizer: str | None = Field(
        default=None,
        description="the served model's tokenizer: a folder or Hub id; empty: model.id",
    )
    endpoint: Literal["chat", "completions"] = Field(
        default="chat",
        description="chat: the server applies its chat template; completions: token ids "
        "templated here",
    )
    max_concurrency: int = Field(default=64, ge=1, le=4096, description="requests in flight")
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    request_timeout_s: float = Field(default=600.0, gt=0, description="per HTTP attempt")
    max_retries: int = Field(default=6, ge=0, le=20, description="per request")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        from builder.sampling.openai_client import check_base_url

        if value is not None:
            check_base_url(value)
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        from builder.sampling.openai_client import check_env_name

        if value is not None:
            check_env_name(value)
        return value

    @model_validator(mode="after")
    def _served(self) -> ServedFields:
        backend = getattr(self, "backend", None)
        if backend == "openai":
            if not self.base_url:
                raise ValueError(
                    "backend 'openai' needs base_url, the server's OpenAI-compatible endpoint "
                    "(e.g. http://127.0.0.1:8000/v1)"
                )
            if self.endpoint == "chat" and getattr(self, "chat_template", None) is not None:
                raise ValueError(
                    "chat_template is applied here, but the chat endpoint applies the server's "
                    "template; set endpoint: completions to send the prompts as token ids"
                )
        else:
            defaults = type(self).model_fields
            changed = [
                name for name in SERVED_FIELDS if getattr(self, name) != defaults[name].default
            ]
            if changed:
                many = len(changed) > 1
                raise ValueError(
                    f"{', '.join(changed)} only appl{'y' if many else 'ies'} to backend "
                    f"'openai' (a served model); set backend: openai or remove "
                    f"{'them' if many else 'it'}"
                )
        return self

    @model_serializer(mode="wrap")
    def _served_last(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Written after the engine fields, and only for a served model: a vLLM recipe's
        # recipe.yaml (and fingerprint) stays what it was before these fields existed.
        data = handler(self)
        served = {k: data.pop(k) for k in SERVED_FIELDS if k in data}
        if getattr(self, "backend", None) == "openai":
            data.update(served)
        return data


def without_served(model: dict[str, Any], backend: str | None) -> dict[str, Any]:
    """A ``model`` section's dict for a fingerprint: transport fields of a served model out."""
    if backend != "openai":
        return model
    return {k: v for k, v in model.items() if k not in TRANSPORT_FIELDS}


def drop_for_backend(model: dict[str, Any], backend: str) -> dict[str, Any]:
    """A ``model`` section switched to ``backend`` by a flag: served fields go with the old
    backend (``--backend vllm`` on a served recipe samples in-process instead)."""
    if backend == "openai":
        return model
    return {k: v for k, v in model.items() if k not in SERVED_FIELDS}


# --- resolving a served build ---------------------------------------------------------------


def tokenizer_model(model: Any) -> Any:
    """The ``ResolvedModel`` the tokenizer (and generation config) come from.

    ``model.tokenizer`` when given, else ``model.id``; a clear error when neither is a folder,
    an embedded model or a Hub id.
    """
    from builder.models import resolve_model

    source = model.tokenizer or model.id
    try:
        return resolve_model(source, model.revision if source == model.id else None)
    except ModelError as exc:
        what = "model.tokenizer" if model.tokenizer else "model.id"
        raise ModelError(
            f"backend 'openai' needs the served model's tokenizer (a prefix is L of its "
            f"tokens, and text the server returns without ids is tokenised again), but "
            f"{what} {source!r} is not a tokenizer folder, an embedded model or a Hub id "
            f"({exc}); set model.tokenizer to its folder or Hub id"
        ) from None


def local_generation_config(path: str) -> dict[str, Any] | None:
    """generation_config.json of a local folder; None when there is none (no Hub lookup)."""
    file = Path(path) / "generation_config.json"
    if not file.is_file():
        return None
    try:
        found = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def resolve_served(recipe: Any) -> tuple[Any, dict[str, str], Any]:
    """(the ResolvedModel, where each decoding value comes from, the resolved recipe).

    The ResolvedModel keeps ``model.id`` as its spec and points its path at the tokenizer
    source, so that the pipeline's tokenizer and context checks read the served model's files.
    Empty decoding values take the tokenizer folder's generation config, else stay empty:
    the server's defaults apply and nothing is sent.
    """
    from builder.models import ResolvedModel
    from builder.resolve import NEUTRAL_DECODING

    m = recipe.model
    warn_unused_engine_settings(m)
    tok = tokenizer_model(m)
    gen = local_generation_config(tok.path)
    s = recipe.sampling
    update: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, neutral in NEUTRAL_DECODING.items():
        value = getattr(s, name)
        if value is not None:
            sources[name] = "recipe"
        elif gen is not None and gen.get(name) is not None:
            value = type(neutral)(gen[name])
            sources[name] = "generation_config"
        elif gen is not None:
            value = neutral  # the folder's generation config leaves it off
            sources[name] = "neutral"
        else:
            sources[name] = "server"
        update[name] = value
    if gen is None:
        logger.info(
            "no generation_config.json in %s: %s left to the server's defaults",
            tok.path,
            ", ".join(k for k, v in sources.items() if v == "server") or "nothing",
        )
    resolved = recipe.model_copy(update={"sampling": s.model_copy(update=update)})
    same = (m.tokenizer or m.id) == m.id
    model = ResolvedModel(
        spec=m.id,
        path=tok.path,
        revision=tok.revision if same else m.revision,
        display_name=f"{tok.display_name if same else m.id} (served as {m.served_name or m.id})",
    )
    return model, sources, resolved


def served_settings(sampling: Any) -> tuple[Any, frozenset[str]]:
    """The decoding settings of a resolved ``sampling`` section, and the fields it leaves to
    the server (empty ones are not sent; their value here is the neutral one, never used)."""
    from builder.resolve import NEUTRAL_DECODING
    from builder.sampling.base import SamplingSettings

    unsent = frozenset(k for k in NEUTRAL_DECODING if getattr(sampling, k) is None)
    settings = SamplingSettings(
        temperature=sampling.temperature,
        top_p=sampling.top_p if sampling.top_p is not None else 1.0,
        top_k=sampling.top_k if sampling.top_k is not None else 0,
        seed=sampling.seed,
        repetition_penalty=(
            sampling.repetition_penalty if sampling.repetition_penalty is not None else 1.0
        ),
    )
    return settings, unsent


def make_build_executor(recipe: Any, model: Any, staging: Path) -> Any:
    """The executor of a served build (``model``: from :func:`resolve_served`)."""
    from builder.models import load_tokenizer
    from builder.served_executor import ServedExecutor

    m = recipe.model
    settings, unsent = served_settings(recipe.sampling)
    pinned = bool(m.revision) and (m.tokenizer or m.id) == m.id

    def tokenizer() -> Any:
        return load_tokenizer(model, pinned, m.chat_template)

    return ServedExecutor.from_model(
        m, settings, tokenizer, unsent=unsent, usage_dir=staging / "served-usage"
    )


def chat_of(messages: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    """Chat messages as the (role, content) pairs a shard request carries."""
    return tuple((m["role"], m["content"]) for m in messages)


def wants_messages(model: Any) -> bool:
    """Whether a ``model`` section's engine takes the prompts as chat messages."""
    return getattr(model, "backend", None) == "openai" and getattr(model, "endpoint", "") == "chat"


def unused_engine_settings(model: BaseModel) -> list[str]:
    """``name=value`` of each engine setting that ``model`` moves off its default: with
    ``backend: openai`` no engine starts here, so none of them changes what the server does."""
    fields = type(model).model_fields
    return [
        f"{name}={getattr(model, name)!r}"
        for name in ENGINE_FIELDS
        if name in fields and getattr(model, name) != fields[name].default
    ]


def warn_unused_engine_settings(model: BaseModel) -> None:
    """One warning line naming the engine settings a served model's section sets in vain."""
    unused = unused_engine_settings(model)
    if unused:
        logger.warning(
            "model %s not used with backend 'openai': the server computes as it was started "
            "(set them where it is launched, e.g. vllm serve --dtype ...)",
            ", ".join(unused),
        )


def served_identity(model: Any) -> tuple[Any, dict[str, Any]]:
    """For ``upft-eval --backend openai``: the ResolvedModel its tokenizer comes from, and what
    identifies the evaluated model (the served name at the endpoint; no weights are read here,
    so the fingerprint names the model by ``model.id`` and ``revision``)."""
    from builder.sampling.openai_client import public_url

    warn_unused_engine_settings(model)
    tok = tokenizer_model(model)
    name = model.served_name or model.id
    ident = {
        "spec": model.id,
        "name": f"{name} served at {public_url(model.base_url)}",
        "path": public_url(model.base_url),
        "revision": model.revision,
        "commit": None,
        "folder_sha256": None,
        "tokenizer": tok.spec,
    }
    return tok, ident


def make_eval_executor(model: Any, tok_model: Any, phases: dict[str, Any]) -> Any:
    """The executor of a served eval: each phase with its own decoding (all of it sent)."""
    from builder.models import load_tokenizer
    from builder.served_executor import ServedExecutor

    pinned = bool(model.revision) and (model.tokenizer or model.id) == model.id
    first = next(iter(phases.values()))
    return ServedExecutor.from_model(
        model,
        first,
        lambda: load_tokenizer(tok_model, pinned, model.chat_template),
        phase_settings=phases,
    )
