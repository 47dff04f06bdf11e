"""Decoding values resolved against the model (builder.resolve)."""

from __future__ import annotations

from builder.models import ResolvedModel
from builder.recipe import parse_recipe
from builder.resolve import decoding_sources, generation_defaults, resolve
from tests.fakes import fake_model_dir

BASE = {"name": "r", "version": "1.0.0", "source": {"path": "q.jsonl"}}


def model(tmp_path, gen):
    folder = fake_model_dir(tmp_path, gen)
    return ResolvedModel(str(folder), str(folder), None, "fake")


def test_generation_config_fills_what_the_recipe_left_empty(tmp_path):
    m = model(tmp_path, {"top_p": 0.95, "top_k": 20, "repetition_penalty": 1.05})
    r = resolve(parse_recipe(BASE), m)
    assert (r.sampling.top_p, r.sampling.top_k, r.sampling.repetition_penalty) == (0.95, 20, 1.05)
    assert r.sampling.settings().repetition_penalty == 1.05


def test_recipe_wins_and_missing_fields_are_neutral(tmp_path):
    m = model(tmp_path, {"top_p": 0.95})
    recipe = parse_recipe({**BASE, "sampling": {"top_k": 7}})
    gen = generation_defaults(m)
    r = resolve(recipe, m, gen)
    assert (r.sampling.top_p, r.sampling.top_k, r.sampling.repetition_penalty) == (0.95, 7, 1.0)
    assert decoding_sources(recipe, gen) == {
        "top_p": "generation_config",
        "top_k": "recipe",
        "repetition_penalty": "neutral",
    }


def test_a_model_without_generation_config_decodes_neutrally(tmp_path):
    folder = fake_model_dir(tmp_path, None)
    m = ResolvedModel(str(folder), str(folder), None, "fake")
    assert generation_defaults(m) == {}  # a folder is not a Hub id: nothing to download
    r = resolve(parse_recipe(BASE), m, {})
    assert (r.sampling.top_p, r.sampling.top_k, r.sampling.repetition_penalty) == (1.0, 0, 1.0)
