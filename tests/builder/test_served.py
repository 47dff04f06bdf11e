"""Tests of builder.served: the served-model fields of recipes and eval configs, the tokenizer
and decoding defaults a served build resolves to, the fingerprint, and a whole build through the
scripted server (fast; the real vLLM server's builds are in ``test_served_builds.py``)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.errors import ModelError, RecipeError
from builder.manifest import Manifest, fingerprint
from builder.pipeline import build
from builder.recipe import apply_overrides, parse_recipe
from builder.sampling import make_sampler
from builder.sampling.openai import ServedEngine, ServedSpec
from builder.served import (
    resolve_served,
    served_settings,
    tokenizer_model,
    unused_engine_settings,
)
from builder.served_executor import ServedExecutor
from tests.conftest import demo_recipe
from tests.fakes import CharTokenizer, fake_model_dir
from tests.served.scripted import ScriptedServer

URL = "http://127.0.0.1:8000/v1"


def _recipe(**model: Any) -> dict[str, Any]:
    return {
        "name": "x",
        "version": "1.0.0",
        "source": {"path": "q.jsonl"},
        "model": {"backend": "openai", "base_url": URL, "served_name": "m", **model},
    }


def test_engine_settings_of_a_served_model_are_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from upft.evaluation.config import ModelSection

    assert unused_engine_settings(parse_recipe(_recipe()).model) == []
    recipe = parse_recipe(_recipe(dtype="float32", max_model_len=2048, cpu_kvcache_gib=2))
    # cpu_kvcache_gib 2 is the default: only what moves off a default is named
    assert unused_engine_settings(recipe.model) == ["dtype='float32'", "max_model_len=2048"]
    section = ModelSection(backend="openai", base_url=URL, compile="eager")
    assert unused_engine_settings(section) == ["compile='eager'"]
    folder = fake_model_dir(tmp_path, None)
    with caplog.at_level("WARNING", logger="builder.served"):
        resolve_served(parse_recipe(_recipe(dtype="bfloat16", tokenizer=str(folder))))
    assert [r.getMessage() for r in caplog.records if r.name == "builder.served"] == [
        "model dtype='bfloat16' not used with backend 'openai': the server computes as it was "
        "started (set them where it is launched, e.g. vllm serve --dtype ...)"
    ]


def test_served_fields_follow_the_engine_fields_and_only_for_a_served_model() -> None:
    served = parse_recipe(_recipe(api_key_env="MY_KEY")).resolved_dict()["model"]
    keys = list(served)
    assert keys.index("base_url") > keys.index("compile")
    assert served["api_key_env"] == "MY_KEY" and served["endpoint"] == "chat"
    plain = parse_recipe({"name": "x", "version": "1.0.0", "source": {"path": "q.jsonl"}})
    assert "base_url" not in plain.resolved_dict()["model"]


@pytest.mark.parametrize(
    "model, message",
    [
        ({"base_url": None}, r"backend 'openai' needs base_url"),
        ({"backend": "vllm"}, r"base_url, served_name only apply to backend 'openai'"),
        ({"chat_template": "{{x}}"}, r"chat_template is applied here.*endpoint: completions"),
        ({"max_concurrency": 0}, r"max_concurrency"),
    ],
)
def test_bad_served_fields_are_named(model: dict[str, Any], message: str) -> None:
    data = _recipe(**model)
    if model.get("base_url", URL) is None:
        del data["model"]["base_url"]
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data)


def test_secrets_in_the_recipe_are_refused_and_never_repeated() -> None:
    secret = "sk-proj-7Hq2LmX9"
    for model in ({"api_key_env": secret}, {"base_url": f"http://u:{secret}@h:8000/v1"}):
        with pytest.raises(RecipeError) as err:
            parse_recipe(_recipe(**model))
        assert secret not in str(err.value)
        assert "api_key_env" in str(err.value)


def test_cross_section_rules() -> None:
    with pytest.raises(RecipeError, match=r"remove executor.kind: ray"):
        parse_recipe({**_recipe(), "executor": {"kind": "ray"}})
    with pytest.raises(RecipeError, match=r"full_trace_from: prefix.*endpoint: completions"):
        parse_recipe({**_recipe(), "mixture": {"full_trace_from": "prefix"}})
    parse_recipe({**_recipe(endpoint="completions"), "mixture": {"full_trace_from": "prefix"}})


def test_backend_flag_switching_away_drops_the_served_fields() -> None:
    recipe = apply_overrides(parse_recipe(_recipe()), backend="vllm")
    assert recipe.model.backend == "vllm" and recipe.model.base_url is None


def test_where_the_server_is_is_not_in_the_fingerprint_what_it_serves_is() -> None:
    base = parse_recipe(_recipe())
    fp = fingerprint(base, {}, None)
    moved = parse_recipe(
        _recipe(base_url="https://other:9/v1", api_key_env="K", max_concurrency=8, max_retries=1)
    )
    assert fingerprint(moved, {}, None) == fp
    assert fingerprint(parse_recipe(_recipe(served_name="other")), {}, None) != fp
    assert fingerprint(parse_recipe(_recipe(endpoint="completions")), {}, None) != fp


def test_a_hosted_model_id_without_a_tokenizer_is_a_clear_error() -> None:
    model = parse_recipe(_recipe()).model.model_copy(update={"id": "gpt-4o-mini"})
    with pytest.raises(ModelError, match=r"needs the served model's tokenizer.*model.tokenizer"):
        tokenizer_model(model)


def _folder(tmp_path: Path, gen: dict[str, Any] | None) -> Path:
    return fake_model_dir(tmp_path / ("gen" if gen else "nogen"), gen)


def test_decoding_defaults_from_the_tokenizer_folder_else_left_to_the_server(
    tmp_path: Path,
) -> None:
    with_gen = _folder(tmp_path, {"top_p": 0.95, "top_k": 20})
    recipe = parse_recipe(_recipe(tokenizer=str(with_gen)))
    model, sources, resolved = resolve_served(recipe)
    assert sources == {
        "top_p": "generation_config",
        "top_k": "generation_config",
        "repetition_penalty": "neutral",
    }
    assert (resolved.sampling.top_p, resolved.sampling.top_k) == (0.95, 20)
    assert model.spec == "embedded:smollm2" and model.path == str(with_gen.resolve())
    assert served_settings(resolved.sampling)[1] == frozenset()

    without = _folder(tmp_path, None)
    recipe = parse_recipe(_recipe(tokenizer=str(without)) | {"sampling": {"top_k": 5}})
    _, sources, resolved = resolve_served(recipe)
    assert sources == {"top_p": "server", "top_k": "recipe", "repetition_penalty": "server"}
    assert resolved.sampling.top_p is None and resolved.sampling.top_k == 5
    settings, unsent = served_settings(resolved.sampling)
    assert unsent == frozenset({"top_p", "repetition_penalty"}) and settings.top_k == 5


def test_make_sampler_points_a_served_model_to_its_executor() -> None:
    with pytest.raises(Exception, match=r"backend 'openai' samples through a server"):
        make_sampler("openai", "x", None, None, None)  # type: ignore[arg-type]


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    monkeypatch.setenv("UPFT_SERVED_RETRY_BASE_SECONDS", "0.01")
    s = ScriptedServer(name="smollm2")
    yield s
    s.stop()


def test_a_build_through_a_server_records_it_in_manifest_and_card(
    scripted: ScriptedServer, tmp_path: Path
) -> None:
    """The whole pipeline through the scripted server (character tokenizer): the manifest
    validates, counts the server's usage, and the card says where the samples came from."""
    folder = _folder(tmp_path, None)
    model = {"backend": "openai", "base_url": scripted.base_url, "served_name": "smollm2"}
    recipe = demo_recipe(
        tmp_path / "out", limit=5, backend="openai", model={**model, "tokenizer": str(folder)}
    )
    _, _, resolved = resolve_served(recipe)
    settings, unsent = served_settings(resolved.sampling)
    usage = tmp_path / "usage"
    engine = ServedEngine(ServedSpec.from_model(recipe.model, unsent), CharTokenizer)
    executor = ServedExecutor(engine, settings, usage_dir=usage)
    result = build(recipe, None, quiet=True, executor=executor)
    manifest = Manifest.read(result.path / "manifest.json")
    assert manifest.backend == "openai" and manifest.executor is not None
    assert manifest.executor.kind == "served"
    engine_info = manifest.model.engine
    assert engine_info is not None and engine_info.seeding == "per_request"
    served = engine_info.served
    assert served is not None and served.token_source == "server"
    assert served.tokenizer == str(folder)  # what the prefixes' L tokens are tokens of
    assert served.decoding_left_to_server == ["repetition_penalty", "top_k", "top_p"]
    assert manifest.settings.decoding_sources["top_p"] == "server"
    assert manifest.settings.top_p is None
    reported = executor.reported_tokens()
    assert reported is not None
    assert manifest.tokens.prefix_phase == reported["prefix"]
    assert manifest.tokens.total_sampled == served.traffic.completion_tokens
    card = (result.path / "README.md").read_text()
    assert f"endpoint of a server at `{served.host}` (scripted 9.9.9)" in card
    assert "which knows the model as `smollm2`" in card
    assert re.search(r"\| top_p +\| server default +\|", card)
    assert "Token ids are the server's own" in card
    assert "recipe.yaml" in card and scripted.base_url in (result.path / "recipe.yaml").read_text()
    shutil.rmtree(tmp_path / "out")
