"""The ``openai`` backend's engine: what to ask an OpenAI-compatible server, and how to read it.

Sits between :mod:`builder.served_executor` (which schedules requests across shards) and
:mod:`builder.sampling.openai_client` (HTTP, retries, rate caps, credentials). Any server that
speaks the OpenAI API works: ``vllm serve``, SGLang, TGI, llama.cpp's server, hosted APIs.

**Endpoints.** ``model.endpoint: chat`` (the default) sends the chat messages and lets the server
apply its own chat template; ``completions`` sends the prompt as token ids templated here (the
recipe's ``chat_template``, or a server whose template differs from the tokenizer's).

**Token-exact prefixes.** A prefix is L tokens of the sampling model's tokenizer. Servers that
return the generated token ids (vLLM: ``return_token_ids``; or log-probs with
``return_tokens_as_token_ids``) give them exactly; otherwise the returned text is tokenised again
with the model's tokenizer (``model.tokenizer``) and cut to ``max_tokens``. Which one happened
is counted per sample and recorded (``token_source: server | retokenized | mixed``). When the
chat endpoint returns the prompt's ids, they are compared with the local template's, so a
server whose template differs is reported.

**Probe.** Before sampling, :meth:`ServedEngine.probe` reads ``/v1/models`` (id, root,
``max_model_len``) and ``/version``, and sends one small request twice with the same seed: it
finds out whether the server takes vLLM's sampling extras (token ids, ``top_k``, repetition
penalty, stop ids), returns ids and log-probs, honours ``n``, and whether the same seed gives
the same sample (then a resumed or retried build equals an uninterrupted one).

**Seeds.** Every request carries ``seed`` = a hash of the phase seed, the question id and the
sample index (0 for a request of ``n = N``), so a shard's samples do not depend on when, in
which order or how often it was sent.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from builder.errors import ModelError, SamplingError
from builder.executor import Chat
from builder.prompts import encode_text
from builder.sampling.base import Sample, SamplingSettings, stop_token_ids
from builder.sampling.openai_client import RequestRefused, ServedClient, host_of, public_url

logger = logging.getLogger(__name__)

PROBE_CHAT: Chat = (("user", "Write two sentences about a lighthouse at night."),)
PROBE_SEED = 20_251_203
PROBE_TOKENS = 8
# Decoding fields a server may leave at its own defaults (recipe and generation config silent).
SERVER_DEFAULTABLE = ("top_p", "top_k", "repetition_penalty")


def request_seed(seed: int, question_id: str, sample: int) -> int:
    """The ``seed`` of one request: a function of the phase seed, the question and the sample
    index alone (31 bits: every server's seed type holds it)."""
    digest = hashlib.sha256(f"{seed}:{question_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class ServedSpec:
    """How to reach the server (from a recipe's or an eval config's ``model`` section)."""

    base_url: str
    served_name: str
    api_key_env: str | None = None
    endpoint: str = "chat"  # "chat" | "completions"
    max_concurrency: int = 64
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    request_timeout_s: float = 600.0
    max_retries: int = 6
    #: decoding fields left to the server's defaults (never sent)
    unsent: frozenset[str] = frozenset()
    #: where the sampling model's tokenizer comes from (recorded: what a prefix's L tokens are)
    tokenizer: str | None = None

    @classmethod
    def from_model(cls, model: Any, unsent: frozenset[str] = frozenset()) -> ServedSpec:
        """From a ``model`` section with the served fields (``builder.served.ServedFields``)."""
        if not model.base_url:
            raise ModelError(
                "backend 'openai' needs model.base_url (e.g. http://127.0.0.1:8000/v1)"
            )
        return cls(
            base_url=model.base_url,
            served_name=model.served_name or model.id,
            api_key_env=model.api_key_env,
            endpoint=model.endpoint,
            max_concurrency=model.max_concurrency,
            requests_per_minute=model.requests_per_minute,
            tokens_per_minute=model.tokens_per_minute,
            request_timeout_s=model.request_timeout_s,
            max_retries=model.max_retries,
            unsent=unsent,
            tokenizer=model.tokenizer or model.id,
        )


@dataclass
class ServerInfo:
    """What the probe found out about the server."""

    model: dict[str, Any]  # the /v1/models entry: id, root, max_model_len, owned_by
    version: str | None  # /version, when the server answers it (vLLM does)
    extras: bool  # takes vLLM's sampling extras (return_token_ids, top_k, stop_token_ids, ...)
    token_ids: bool  # returns the generated token ids
    logprobs: bool
    n: bool  # answers n > 1 with n choices
    seed: bool  # takes a per-request seed
    seed_honoured: bool | None  # the same seed gave the same sample twice


@dataclass
class Answer:
    """One request's samples and the usage the server reported for it."""

    samples: list[Sample]
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass
class _Counts:
    token_source: Counter[str] = field(default_factory=Counter)
    prompt_checked: int = 0
    prompt_differs: int = 0


class ServedEngine:
    """One served model: the probe, request bodies, and answers read into :class:`Sample`.

    ``load_tokenizer`` makes the sampling model's tokenizer when it is first needed.
    """

    def __init__(self, spec: ServedSpec, load_tokenizer: Callable[[], Any]) -> None:
        self.spec = spec
        self._load_tokenizer = load_tokenizer
        self._tok: Any = None
        self._stops: set[int] | None = None
        self.client = ServedClient(
            spec.base_url,
            spec.api_key_env,
            timeout_s=spec.request_timeout_s,
            max_retries=spec.max_retries,
            max_concurrency=spec.max_concurrency,
            requests_per_minute=spec.requests_per_minute,
            tokens_per_minute=spec.tokens_per_minute,
        )
        self.info: ServerInfo | None = None
        self.counts = _Counts()
        self.sent: dict[str, dict[str, Any]] = {}  # per phase: the decoding fields sent
        self._warned_prompt = False

    @property
    def path(self) -> str:
        return "chat/completions" if self.spec.endpoint == "chat" else "completions"

    @property
    def tokenizer(self) -> Any:
        if self._tok is None:
            self._tok = self._load_tokenizer()
        return self._tok

    @property
    def stops(self) -> set[int]:
        if self._stops is None:
            self._stops = stop_token_ids(self.tokenizer)
        return self._stops

    # --- the probe ------------------------------------------------------------------------

    async def probe(self) -> ServerInfo:
        """Find out what the server is and what it takes (see the module doc)."""
        c = self.client
        listed = await c.get_json("models")
        entries = listed.get("data", []) if isinstance(listed, dict) else []
        names = [str(e.get("id")) for e in entries if isinstance(e, dict)]
        entry = next((e for e in entries if e.get("id") == self.spec.served_name), None)
        if entry is None:
            raise ModelError(
                f"{c.endpoint} serves {', '.join(repr(n) for n in names) or 'no model'}, not "
                f"{self.spec.served_name!r}; set model.served_name to the name the server knows"
            )
        model = {k: entry.get(k) for k in ("id", "root", "max_model_len", "owned_by")}
        version_doc = await c.get_json("/version", missing_ok=True)
        version = version_doc.get("version") if isinstance(version_doc, dict) else None
        prompt = self._probe_prompt()
        data, extras, seed = None, True, True
        # A server that refuses an unknown field (hosted APIs do) is asked again without it.
        for extras, seed in ((True, True), (False, True), (False, False)):
            body = self._body(prompt, PROBE_CHAT, 2, PROBE_TOKENS, None, extras, seed)
            body["temperature"] = 1.0
            if seed:
                body["seed"] = PROBE_SEED
            try:
                data = await c.post_json(self.path, body)
                break
            except RequestRefused as exc:
                logger.info("probe without %s: %s", "extras" if extras else "seed", exc)
        if data is None:
            raise SamplingError(f"{c.endpoint}/{self.path} refused every probe request")
        choices = _choices(data)
        first = choices[0] if choices else {}
        info = ServerInfo(
            model=model,
            version=str(version) if version is not None else None,
            extras=extras,
            token_ids=_ids_of(first) is not None,
            logprobs=_logprobs_of(first, self.spec.endpoint) is not None,
            n=len(choices) == 2,
            seed=seed,
            seed_honoured=None,
        )
        if seed:
            again = await c.post_json(self.path, body)
            info.seed_honoured = _texts(again, self.spec.endpoint) == _texts(
                data, self.spec.endpoint
            )
        self.info = info
        if info.seed_honoured is False:
            logger.warning(
                "%s did not give the same sample twice for the same seed: a resumed or retried "
                "build will differ from an uninterrupted one",
                c.endpoint,
            )
        return info

    def _probe_prompt(self) -> list[int]:
        if self.spec.endpoint != "completions":
            return []
        msgs = [{"role": r, "content": t} for r, t in PROBE_CHAT]
        text = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return encode_text(self.tokenizer, text)

    # --- requests -------------------------------------------------------------------------

    def _body(
        self,
        prompt: Sequence[int],
        chat: Chat | None,
        n: int,
        max_tokens: int,
        settings: SamplingSettings | None,
        extras: bool,
        seed: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.spec.served_name}
        if self.spec.endpoint == "chat":
            if chat is None:
                raise SamplingError(
                    "internal: the chat endpoint needs the prompts as messages (ShardRequest."
                    "messages); use model.endpoint: completions to send token ids"
                )
            body["messages"] = [{"role": r, "content": t} for r, t in chat]
        else:
            body["prompt"] = list(prompt)
        body["n"] = n
        body["max_tokens"] = max_tokens
        if settings is not None:
            body.update(self.decoding(settings, extras))
        if self.spec.endpoint == "chat":
            body["logprobs"] = True
            body["top_logprobs"] = 0
        else:
            body["logprobs"] = 0
        if extras:
            body["return_token_ids"] = True
            body["stop_token_ids"] = sorted(self.stops)
        return body

    def decoding(self, s: SamplingSettings, extras: bool) -> dict[str, Any]:
        """The decoding fields sent for ``s`` (left out: the server's defaults)."""
        out: dict[str, Any] = {"temperature": s.temperature}
        if "top_p" not in self.spec.unsent:
            out["top_p"] = s.top_p
        if extras:
            if "top_k" not in self.spec.unsent:
                out["top_k"] = s.top_k if s.top_k > 0 else -1
            if "repetition_penalty" not in self.spec.unsent:
                out["repetition_penalty"] = s.repetition_penalty
        return out

    def unsendable(self, s: SamplingSettings) -> list[str]:
        """Decoding values the server cannot take (no vLLM extras) that would change samples."""
        if self.info is None or self.info.extras:
            return []
        bad = []
        if "top_k" not in self.spec.unsent and s.top_k > 0:
            bad.append(f"top_k={s.top_k}")
        if "repetition_penalty" not in self.spec.unsent and s.repetition_penalty != 1.0:
            bad.append(f"repetition_penalty={s.repetition_penalty}")
        return bad

    def body(
        self,
        phase: str,
        prompt: Sequence[int],
        chat: Chat | None,
        n: int,
        max_tokens: int,
        settings: SamplingSettings,
        seed: int,
    ) -> dict[str, Any]:
        """The request for one prompt (``n`` samples) of ``phase``; records what is sent."""
        info = self.info
        assert info is not None, "probe() first"
        body = self._body(prompt, chat, n, max_tokens, settings, info.extras, info.seed)
        if info.seed:
            body["seed"] = seed
        if phase not in self.sent:
            shown = {k: v for k, v in body.items() if k not in ("messages", "prompt", "model")}
            if info.seed:
                shown["seed"] = "per request: hash of (phase seed, question id, sample index)"
            self.sent[phase] = shown
        return body

    async def ask(
        self,
        phase: str,
        prompt: Sequence[int],
        chat: Chat | None,
        n: int,
        max_tokens: int,
        settings: SamplingSettings,
        seed: int,
    ) -> Answer:
        """Sample ``n`` continuations of one prompt."""
        body = self.body(phase, prompt, chat, n, max_tokens, settings, seed)
        data = await self.client.post_json(self.path, body, cost=len(prompt) + n * max_tokens)
        return self.read(data, n, max_tokens, prompt)

    # --- answers --------------------------------------------------------------------------

    def read(self, data: Any, n: int, max_tokens: int, prompt: Sequence[int]) -> Answer:
        """The samples of one answer, in choice order (token ids without the stop token)."""
        choices = _choices(data)
        if len(choices) != n:
            raise SamplingError(
                f"{self.client.endpoint}/{self.path} returned {len(choices)} choice(s) for n = {n}"
            )
        self._check_prompt(data, choices, prompt)
        samples = [self._sample(c, max_tokens) for c in choices]
        usage = data.get("usage") if isinstance(data, dict) else None
        prompt_tokens = completion = None
        if isinstance(usage, dict):
            prompt_tokens = _int(usage.get("prompt_tokens"))
            completion = _int(usage.get("completion_tokens"))
        t = self.client.traffic
        if completion is None:
            t.without_usage += 1
        else:
            t.completion_tokens += completion
            t.prompt_tokens += prompt_tokens or 0
        return Answer(samples, prompt_tokens, completion)

    def _sample(self, choice: dict[str, Any], max_tokens: int) -> Sample:
        endpoint = self.spec.endpoint
        if endpoint == "chat":
            message = choice.get("message") or {}
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
        text = text or ""
        reason = "stop" if choice.get("finish_reason") == "stop" else "length"
        logprobs = _logprobs_of(choice, endpoint)
        ids = _ids_of(choice)
        if ids is not None:
            self.counts.token_source["server"] += 1
            if ids and ids[-1] in self.stops:
                ids = ids[:-1]
        else:
            # The text was decoded by the server; the model's tokenizer makes it tokens again.
            self.counts.token_source["retokenized"] += 1
            ids = encode_text(self.tokenizer, text)
            if len(ids) > max_tokens:
                ids = ids[:max_tokens]
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cumulative = sum(logprobs) if logprobs is not None else None
        return Sample(ids, text, reason, cumulative)

    def _check_prompt(
        self, data: Any, choices: list[dict[str, Any]], prompt: Sequence[int]
    ) -> None:
        if self.spec.endpoint != "chat" or not prompt:
            return
        got = data.get("prompt_token_ids") if isinstance(data, dict) else None
        if got is None and choices:
            got = choices[0].get("prompt_token_ids")
        if not isinstance(got, list):
            return
        self.counts.prompt_checked += 1
        if [int(t) for t in got] != list(prompt):
            self.counts.prompt_differs += 1
            if not self._warned_prompt:
                self._warned_prompt = True
                logger.warning(
                    "the server's chat template gives other prompt tokens than the local "
                    "tokenizer's (%d vs %d tokens); the samples follow the server's prompt. Set "
                    "model.endpoint: completions to send the local template's tokens",
                    len(got),
                    len(prompt),
                )

    # --- reporting ------------------------------------------------------------------------

    def token_source(self) -> str | None:
        found = {k for k, v in self.counts.token_source.items() if v}
        if not found:
            return None
        return found.pop() if len(found) == 1 else "mixed"

    def describe(self) -> dict[str, Any]:
        """The manifest's ``served`` record (no credentials: the endpoint without them)."""
        info = self.info
        spec = self.spec
        out: dict[str, Any] = {
            "endpoint": public_url(spec.base_url),
            "host": host_of(spec.base_url),
            "api": spec.endpoint,
            "served_name": spec.served_name,
            "api_key_env": spec.api_key_env,
            "tokenizer": spec.tokenizer,
            "models_entry": None if info is None else dict(info.model),
            "server_version": None if info is None else info.version,
            "server_takes_extras": None if info is None else info.extras,
            "server_returns_ids": None if info is None else info.token_ids,
            "server_returns_logprobs": None if info is None else info.logprobs,
            "n_per_request": None if info is None else info.n,
            "seed_sent": None if info is None else info.seed,
            "seed_honoured": None if info is None else info.seed_honoured,
            "token_source": self.token_source(),
            "samples_by_token_source": dict(sorted(self.counts.token_source.items())),
            "prompts_checked": self.counts.prompt_checked,
            "prompts_differing": self.counts.prompt_differs,
            "decoding_left_to_server": sorted(spec.unsent),
            "sent": dict(self.sent),
            "max_concurrency": spec.max_concurrency,
            "requests_per_minute": spec.requests_per_minute,
            "tokens_per_minute": spec.tokens_per_minute,
            "request_timeout_s": spec.request_timeout_s,
            "max_retries": spec.max_retries,
            "traffic": self.client.traffic.as_dict(),
        }
        return out

    async def aclose(self) -> None:
        await self.client.aclose()


def _choices(data: Any) -> list[dict[str, Any]]:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        return []
    return sorted((c for c in choices if isinstance(c, dict)), key=lambda c: c.get("index", 0))


def _ids_of(choice: dict[str, Any]) -> list[int] | None:
    """Generated ids: vLLM's ``token_ids``, or log-prob tokens written as ``token_id:N``."""
    ids = choice.get("token_ids")
    if isinstance(ids, list):
        return [int(t) for t in ids]
    lp = choice.get("logprobs")
    tokens: list[Any] = []
    if isinstance(lp, dict):
        if isinstance(lp.get("content"), list):
            tokens = [e.get("token") for e in lp["content"] if isinstance(e, dict)]
        elif isinstance(lp.get("tokens"), list):
            tokens = lp["tokens"]
    if tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        return [int(t.split(":", 1)[1]) for t in tokens]
    return None


def _logprobs_of(choice: dict[str, Any], endpoint: str) -> list[float] | None:
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    values: list[Any]
    if endpoint == "chat":
        content = lp.get("content")
        if not isinstance(content, list):
            return None
        values = [e.get("logprob") for e in content if isinstance(e, dict)]
    else:
        found = lp.get("token_logprobs")
        if not isinstance(found, list):
            return None
        values = found
    # A None (the first token of an echoed prompt) is left out.
    return [float(v) for v in values if v is not None]


def _texts(data: Any, endpoint: str) -> list[str]:
    out = []
    for c in _choices(data):
        if endpoint == "chat":
            out.append(str((c.get("message") or {}).get("content") or ""))
        else:
            out.append(str(c.get("text") or ""))
    return out


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
