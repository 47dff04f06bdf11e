"""Resolving a recipe against its model: the decoding values the recipe left empty.

Runs once per build, after the model is resolved and before anything is fingerprinted or
sampled. The paper samples with top_p / top_k from the model's generation config; so do we, and
the repetition penalty too (Qwen2.5-Math ships 1.05), so that both backends apply the same
values. A value neither the recipe nor the generation config sets takes the engines' neutral
value (disabled). The resolved recipe is what is fingerprinted and written out, and the manifest
records where each value came from.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from builder.models import ResolvedModel
from builder.recipe import Recipe

logger = logging.getLogger(__name__)

# The engines' neutral values: what a field means when neither recipe nor model sets it.
NEUTRAL_DECODING: dict[str, float | int] = {"top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


def generation_defaults(model: ResolvedModel) -> dict[str, Any]:
    """The model's generation_config.json as a dict (empty when it has none or is offline)."""
    path = Path(model.path) / "generation_config.json"
    if not path.is_file():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(
                hf_hub_download(model.path, "generation_config.json", revision=model.revision)
            )
        except Exception:  # offline, gated or absent: fall back to neutral values
            logger.warning(
                "no generation_config.json for %s; decoding with neutral defaults "
                "(top_p=1.0, top_k disabled, no repetition penalty)",
                model.path,
            )
            return {}
    try:
        found = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def decoding_sources(recipe: Recipe, gen: dict[str, Any]) -> dict[str, str]:
    """Where each resolvable decoding value comes from: recipe, generation_config or neutral."""
    s = recipe.sampling
    out = {}
    for name in NEUTRAL_DECODING:
        if getattr(s, name) is not None:
            out[name] = "recipe"
        elif gen.get(name) is not None:
            out[name] = "generation_config"
        else:
            out[name] = "neutral"
    return out


def resolve(recipe: Recipe, model: ResolvedModel, gen: dict[str, Any] | None = None) -> Recipe:
    """Fill what the recipe left to the model's generation config, else the neutral value."""
    gen = generation_defaults(model) if gen is None else gen
    s = recipe.sampling
    update: dict[str, Any] = {}
    for name, neutral in NEUTRAL_DECODING.items():
        value = getattr(s, name)
        if value is None:
            found = gen.get(name)
            value = type(neutral)(found) if found is not None else neutral
        update[name] = value
    return recipe.model_copy(update={"sampling": s.model_copy(update=update)})
