"""What ``upft-train`` leaves besides the weights: model card, training summary, Hub upload.

Last stage of the trainer (``upft.train`` calls it after saving the model). The card names
the dataset and the exact data that was trained on (Hub repo + requested revision + resolved
commit, or local folder + manifest fingerprint), the settings and the results, and cites the
UPFT paper. ``train_summary.json`` holds the same facts for programs. :func:`push_folder`
uploads the finished folder to a Hub model repo as a single commit.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from builder.errors import TrainError
from upft.config import TrainConfig
from upft.teacher import card_text

logger = logging.getLogger(__name__)

CITATION = """@inproceedings{ji2025first,
  title         = {The First Few Tokens Are All You Need: An Efficient and Effective
                   Unsupervised Prefix Fine-Tuning Method for Reasoning Models},
  author        = {Ji, Ke and others},
  booktitle     = {Advances in Neural Information Processing Systems (NeurIPS)},
  year          = {2025},
  eprint        = {2503.02875},
  archivePrefix = {arXiv}
}"""

_CARD = """---
{{ front_matter }}---

# {{ title }}

`{{ summary.model.spec }}` ({{ summary.model.name }}) fine-tuned with **Unsupervised Prefix
Fine-Tuning** (UPFT, Ji et al. 2025, arXiv:2503.02875): the model is trained on the first tokens
of {{ "another model's" if teacher else "its own" }} sampled solutions, each followed by the
end-of-turn token, mixed with a small share of complete sampled traces. No gold answers are used.
{% if teacher %}

{{ teacher_text }}
{% endif %}

## Training data

| | |
|---|---|
{% if ds.kind == "hub" %}
| Dataset | [`{{ ds.location }}`](https://huggingface.co/datasets/{{ ds.location }}) (Hub) |
| Requested revision | `{{ ds.revision or "main" }}` |
| Resolved commit | `{{ ds.commit }}` |
{% else %}
| Dataset | local folder `{{ ds.location }}` |
{% endif %}
| Config | `{{ ds.config }}` |
| Dataset name / version | {{ ds.name or "?" }} / {{ ds.version or "?" }} |
| Manifest fingerprint | `{{ ds.fingerprint or "none (no manifest.json)" }}` |
{% if ds.built_with %}
| Sampled with | `{{ ds.built_with.id }}`
{%- if ds.built_with.get("revision") %} @ `{{ ds.built_with.revision }}`{% endif %} |
{% endif %}
| Examples | {{ ex.prefix }} prefix + {{ ex.full }} full trace = {{ ex.total }}
{%- if summary.dropped_too_long %}
 ({{ summary.dropped_too_long }} longer than max_length left out)
{%- endif %}
{%- if summary.dropped_truncated %}
 ({{ summary.dropped_truncated }} full trace(s) that hit the token limit left out)
{%- endif %} |
| Supervised tokens | {{ tok.prefix }} prefix + {{ tok.full }} full trace = {{ tok.total }} |

Loss is computed on completion tokens only: the prompt is masked, and a prefix example's target is
exactly its prefix tokens followed by `{{ eot_supervised }}`
{%- if eot_tail %}; what the template writes after that (`{{ eot_tail }}`) is not supervised
{%- endif %}.
{% if summary.loss_averaging == "token" %}
The loss is averaged over all supervised tokens of each effective batch (`loss_averaging:
token`), so a long full trace weighs more than a short prefix: not the paper's setup.
{% else %}
Each example counts once (`loss_averaging: example`, the paper's setup): the loss is the mean
over an example's supervised tokens, then the mean over the examples of the effective batch.
{% endif %}
{% if summary.packing.enabled %}
Examples were packed without padding into micro-batches of up to
{{ summary.packing.micro_batch_tokens }} tokens; no token attends across an example's boundary
and the loss is the one an unpacked run computes.
{% endif %}

## Training settings

| Setting | Value |
|---|---|
{% for key, value in settings %}
| {{ key }} | `{{ value }}` |
{% endfor %}

## Results

| | |
|---|---|
| Optimizer steps | {{ summary.steps }} |
| Epochs | {{ "%.3f" | format(summary.epochs or 0) }} |
| Training time | {{ "%.1f" | format(summary.train_time_s) }} s |
{% if throughput %}
| Throughput | {{ throughput }} |
{% endif %}
| Final logged loss | {{ summary.final_loss if summary.final_loss is not none else "n/a" }} |
| Mean training loss | {{ "%.4f" | format(summary.mean_loss) }} |
{% if summary.resumed_from %}
| Resumed from | `{{ summary.resumed_from }}` (training time counts the resumed part) |
{% endif %}

## Use

Prompt with the plain question for a full solution (this is how UPFT models are evaluated):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{{ where }}")
model = AutoModelForCausalLM.from_pretrained("{{ where }}")
ids = tok.apply_chat_template([{"role": "user", "content": "What is 12 * 7?"}],
                              add_generation_prompt=True, return_tensors="pt")
print(tok.decode(model.generate(ids, max_new_tokens=256)[0][ids.shape[1]:]))
```

The folder also loads in vLLM: `vllm.LLM("{{ where }}")`.

## Citation

```bibtex
{{ citation }}
```
"""


def write_summary(summary: dict[str, Any], folder: Path) -> Path:
    path = folder / "train_summary.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def _is_hub_id(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and ":" not in spec


def _show(text: str) -> str:
    """Template text with control characters escaped (a newline shows as ``\\n``); other
    characters, non-ASCII ones included (DeepSeek's ``<｜end▁of▁sentence｜>``), stay as they are."""
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) == "Cc" else c
        for c in text
    )


def _effective_batch(config: TrainConfig, summary: dict[str, Any]) -> str:
    world = summary["world_size"]
    packing = summary["packing"]
    if packing["enabled"]:
        return (
            f"{config.batch_size} examples = {config.batch_size // world} per process x "
            f"{world} process(es), packed into micro-batches of up to "
            f"{packing['micro_batch_tokens']} tokens"
        )
    return (
        f"{config.batch_size} = {config.micro_batch_size} per device x "
        f"{summary['gradient_accumulation_steps']} accumulation x {world} process(es)"
    )


def _packing(packing: dict[str, Any]) -> str:
    if packing["enabled"]:
        return (
            f"on, up to {packing['micro_batch_tokens']} tokens per micro-batch: {packing['reason']}"
        )
    return f"off: {packing['reason']}"


def _throughput(summary: dict[str, Any]) -> str | None:
    rates = summary["throughput"]
    if rates["examples_per_s"] is None:
        return None
    return (
        f"{rates['examples_per_s']} examples/s, {rates['tokens_per_s']} tokens/s "
        f"({rates['supervised_tokens_per_s']} supervised), "
        f"{100 * rates['padding_share']:.1f}% of computed positions padding"
    )


def _precision(summary: dict[str, Any]) -> str:
    text = f"{summary['precision']} ({summary['precision_reason']}"
    if summary["cpu_flags"]:
        text += f"; CPU flags {' '.join(summary['cpu_flags'])}"
    return text + "), float32 master weights"


def render_card(config: TrainConfig, summary: dict[str, Any], folder: Path) -> str:
    """The model card text (README.md with Hub metadata front matter)."""
    import jinja2

    ds = summary["dataset"]
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["upft", "prefix-fine-tuning", "math", "reasoning"],
    }
    if _is_hub_id(summary["model"]["spec"]) and not Path(summary["model"]["spec"]).exists():
        meta["base_model"] = summary["model"]["spec"]
    if ds["kind"] == "hub":
        meta["datasets"] = [ds["location"]]
    settings = [
        ("learning rate", config.learning_rate),
        ("schedule", f"{config.lr_scheduler}, warm-up ratio {config.warmup_ratio}"),
        ("optimizer", f"{config.optimizer}, weight decay {config.weight_decay}"),
        ("gradient clipping", config.max_grad_norm),
        ("effective batch", _effective_batch(config, summary)),
        ("packing", _packing(summary["packing"])),
        ("loss averaging", f"per {config.loss_averaging}"),
        ("epochs", config.epochs),
        ("max steps", config.max_steps if config.max_steps is not None else "none"),
        ("max length", config.max_length),
        ("precision", _precision(summary)),
        ("gradient checkpointing", config.gradient_checkpointing),
        ("seed", config.seed),
    ]
    if config.lora:
        settings.append(
            (
                "LoRA (merged into the weights)",
                f"r={config.lora_r}, alpha={config.lora_alpha}, dropout={config.lora_dropout}, "
                f"modules={','.join(config.lora_target_modules)}",
            )
        )
    else:
        settings.append(("fine-tuning", "full"))
    env = jinja2.Environment(
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    title = config.push_to_hub or folder.resolve().name
    return env.from_string(_CARD).render(
        front_matter=yaml.safe_dump(meta, sort_keys=False),
        title=title,
        summary=summary,
        ds=ds,
        ex=summary["examples"],
        tok=summary["supervised_tokens"],
        settings=settings,
        throughput=_throughput(summary),
        where=config.push_to_hub or str(folder.resolve()),
        citation=CITATION,
        eot_supervised=_show(summary["end_of_turn"]["supervised"]),
        eot_tail=_show(summary["end_of_turn"]["masked_after"]),
        teacher=summary.get("teacher_prefixes"),
        teacher_text=card_text(summary.get("teacher_prefixes")),
    )


def write_card(config: TrainConfig, summary: dict[str, Any], folder: Path) -> Path:
    path = folder / "README.md"
    path.write_text(render_card(config, summary, folder), encoding="utf-8")
    return path


def push_folder(folder: Path, repo_id: str, private: bool) -> dict[str, str]:
    """Create ``repo_id`` (model repo) if needed and upload ``folder`` in one commit.

    Retries, timeouts and error messages come from the Hub layer every command shares
    (``builder.hubclient``); a failure is a TrainError that says where the model is kept
    and how to upload it later."""
    from huggingface_hub import HfApi, get_token

    from builder.hubclient import Advice, configure_timeout, explained, with_retries

    configure_timeout()
    token = get_token()
    api = HfApi(token=token)
    advice = Advice(
        rerun=f"`hf upload {repo_id} {folder} --exclude 'trainer/**'`",
        state=f"The trained model is kept in {folder}",
        repo_flag="--push-to-hub ORG/NAME",
        token_flag=None,
    )
    with explained("creating the model repository", repo_id, token, TrainError, advice):
        with_retries(
            f"creating model repo {repo_id}",
            lambda: api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True),
            advice=advice,
        )
    with explained(f"uploading {folder}", repo_id, token, TrainError, advice):
        info = with_retries(
            f"uploading {folder} to {repo_id}",
            lambda: api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                repo_type="model",
                commit_message=f"upft-train: {folder.name}",
                ignore_patterns=["trainer/**"],
            ),
            advice=advice,
        )
    result = {"repo_id": repo_id, "commit": str(info.oid), "url": str(info.commit_url)}
    logger.info("pushed %s to %s (commit %s)", folder, repo_id, result["commit"])
    return result
