"""Every recipe shipped in recipes/ validates, says whether it is the paper's setting, and the
paper-setting ones are exactly the paper's; none samples an evaluation set."""

from __future__ import annotations

import pytest

from builder.recipe import load_recipe
from tests.conftest import REPO_ROOT

# Training presets (`*.train.yaml`, upft-train --config files) live beside the recipes.
RECIPES = sorted(p for p in (REPO_ROOT / "recipes").glob("*.yaml") if ".train." not in p.name)
PAPER_HEADER = "PAPER SETTING (vote first, N=1)"
VARIANT_HEADER = "OUR VOTED VARIANT"
# The paper's evaluation sets: sampling training data from them would leak the test.
EVAL_SETS = (
    "HuggingFaceH4/MATH-500",
    "math-ai/aime24",
    "Maxwell-Jia/AIME_2024",
    "ChilleD/SVAMP",
    "Idavidrein/gpqa",
)


def _header(path) -> str:
    return "".join(line for line in path.read_text().splitlines(True) if line.startswith("#"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipe_validates_and_names_its_setting(path):
    recipe, _ = load_recipe(path)
    header = _header(path)
    assert (PAPER_HEADER in header) != (VARIANT_HEADER in header), path.name
    if PAPER_HEADER in header:
        # The paper: one plain-prompt sample cut to L, temperature 0.6, top_p/top_k (and the
        # repetition penalty) from the model's generation config.
        assert (recipe.prefix.vote, recipe.prefix.samples) == ("first", 1)
        assert recipe.prefix.sample_prompt == "plain"
        assert recipe.sampling.temperature == 0.6
        assert recipe.sampling.top_p is None and recipe.sampling.top_k is None
        assert recipe.sampling.repetition_penalty is None
        assert not recipe.label_filter.enabled
    else:
        assert recipe.prefix.vote == "majority" and recipe.prefix.samples > 1


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_no_shipped_recipe_samples_an_evaluation_set(path):
    recipe, _ = load_recipe(path)
    for source in recipe.question_sources:
        assert source.split != "test", path.name
        assert source.hub not in EVAL_SETS, path.name


@pytest.mark.parametrize(
    ("name", "model", "length", "ratio"),
    [
        ("gsm8k-qwen-math.yaml", "Qwen/Qwen2.5-Math-7B-Instruct", 32, 0.1),
        ("math-qwen-math.yaml", "Qwen/Qwen2.5-Math-7B-Instruct", 32, 0.1),
        ("gsm8k-llama.yaml", "meta-llama/Llama-3.1-8B-Instruct", 8, 0.1),
        ("limo-r1-distill.yaml", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 128, 0.3),
        ("demo.yaml", "embedded:smollm2", 32, 0.25),
    ],
)
def test_paper_numbers(name, model, length, ratio):
    recipe, _ = load_recipe(REPO_ROOT / "recipes" / name)
    assert (recipe.model.id, recipe.prefix.length, recipe.mixture.full_trace_ratio) == (
        model,
        length,
        ratio,
    )


def test_paper_defaults():
    """With nothing said, a recipe is the paper's method."""
    from builder.recipe import parse_recipe

    r = parse_recipe({"name": "x", "version": "1.0.0", "source": {"path": "q.jsonl"}})
    assert (r.prefix.vote, r.prefix.samples, r.prefix.sample_prompt) == ("first", 1, "plain")
    assert (r.sampling.temperature, r.mixture.full_trace_ratio) == (0.6, 0.1)
    assert not r.label_filter.enabled
