"""Every recipe shipped in recipes/ validates, and the paper recipes keep the paper's settings."""

from __future__ import annotations

import pytest

from builder.recipe import load_recipe
from tests.conftest import REPO_ROOT

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipe_validates(path):
    recipe, _ = load_recipe(path)
    assert recipe.sampling.temperature == 0.6


@pytest.mark.parametrize(
    ("name", "model", "length", "ratio"),
    [
        ("gsm8k-qwen-math.yaml", "Qwen/Qwen2.5-Math-7B-Instruct", 32, 0.1),
        ("gsm8k-llama.yaml", "meta-llama/Llama-3.1-8B-Instruct", 8, 0.1),
        ("limo-r1-distill.yaml", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 128, 0.3),
        ("demo.yaml", "embedded:smollm2", 32, 0.25),
    ],
)
def test_paper_settings(name, model, length, ratio):
    recipe, _ = load_recipe(REPO_ROOT / "recipes" / name)
    assert (recipe.model.id, recipe.prefix.length, recipe.mixture.full_trace_ratio) == (
        model, length, ratio)
