"""The dataset card (README.md) of a built UPFT dataset version.

Where it sits: at the end of ``upft-build`` the writer calls :func:`render_card` with the
typed :class:`~builder.manifest.Manifest` it has just written and the resolved recipe, and
puts the result in the version directory as README.md. ``push-to-hub`` later calls
:func:`replace_versions` to refresh only the Versions section (the block between
:data:`VERSIONS_START` and :data:`VERSIONS_END`) with the tags already on the Hub; every other
byte of the card stays as the builder wrote it.

Everything here is a pure function of its arguments -- the only I/O is reading the Jinja2
template shipped in ``builder.cards`` -- so one manifest always gives the same bytes. The golden
tests and push-to-hub's "already published?" comparison rely on that. The card reads the
manifest's attributes only: the schema (``builder.manifest``) guarantees every field it reads.

Numbers are formatted here (thousands separators, one or two decimals) and tables are padded
by :func:`md_table` so the raw markdown reads aligned; the template gets ``md_table`` as
``table`` for its static tables and arranges the prose around the pieces.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from builder.manifest import Manifest, SourceInfo
from builder.writer import CONFIGS

VERSIONS_START = "<!-- upft:versions:start -->"
VERSIONS_END = "<!-- upft:versions:end -->"

TEMPLATE_NAME = "dataset_card.md.j2"
TAGS = ["upft", "math", "reasoning", "synthetic", "prefix-fine-tuning"]
PLACEHOLDER_ORG = "<your-org>"

# The Hub's size buckets, upper bound exclusive: a dataset with exactly 1,000 rows is "1K<n<10K".
_SIZE_BUCKETS: list[tuple[int, str]] = [
    (10**3, "n<1K"),
    (10**4, "1K<n<10K"),
    (10**5, "10K<n<100K"),
    (10**6, "100K<n<1M"),
    (10**7, "1M<n<10M"),
    (10**8, "10M<n<100M"),
    (10**9, "100M<n<1B"),
    (10**10, "1B<n<10B"),
    (10**11, "10B<n<100B"),
    (10**12, "100B<n<1T"),
]


@dataclass(frozen=True)
class VersionEntry:
    """One published (or about to be published) version, as listed in the card."""

    tag: str  # "v1.0.0"
    version: str  # "1.0.0"
    date: str  # "YYYY-MM-DD"
    fingerprint: str  # manifest fingerprint, 64 hex; the card shows the first 12 chars


# --- small formatting helpers ----------------------------------------------------------------


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for a dataset of ``n`` rows."""
    if n < 0:
        raise ValueError(f"row count must be >= 0 to pick a size category, got {n}")
    for upper, label in _SIZE_BUCKETS:
        if n < upper:
            return label
    return "n>1T"


def fmt_int(value: int) -> str:
    """12345 -> '12,345'."""
    return f"{int(value):,}"


def fmt_float(value: float, decimals: int = 2) -> str:
    """Fixed decimals with thousands separators: 156641.6 -> '156,641.60' (decimals=2)."""
    return f"{float(value):,.{decimals}f}"


def fmt_pct(fraction: float, decimals: int = 1) -> str:
    """A share in 0..1 as a percentage: 0.0833 -> '8.3%'."""
    return f"{100.0 * float(fraction):.{decimals}f}%"


def quote(text: str) -> str:
    """``text`` as a markdown blockquote, every line marked; '' for blank text."""
    return "\n".join(("> " + line).rstrip() for line in str(text).strip().splitlines())


def _cell(text: str) -> str:
    # A pipe would end the cell and a newline the row; both can occur in user-written settings.
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A GitHub-flavoured markdown table padded so the raw text lines up.

    ``align`` holds one letter per column, ``l`` or ``r`` (missing letters mean ``l``).
    """
    cols = len(headers)
    for row in rows:
        if len(row) != cols:
            raise ValueError(f"table row {list(row)!r} has {len(row)} cells, expected {cols}")
    cells = [[_cell(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(cols)]
    right = [i < len(align) and align[i] == "r" for i in range(cols)]

    def line(row: list[str]) -> str:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "| "
        + " | ".join(
            "-" * (w - 1) + ":" if r else "-" * w for w, r in zip(widths, right, strict=True)
        )
        + " |"
    )
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


# --- versions ----------------------------------------------------------------------------------


def _version_key(entry: VersionEntry) -> tuple[Any, ...]:
    from packaging.version import InvalidVersion, Version

    try:
        return (1, Version(entry.version), entry.date, entry.tag)
    except InvalidVersion:
        # Not a PEP 440 version (should not happen: recipes validate it); keep it, oldest-looking.
        return (0, entry.date, entry.tag)


def _sorted_versions(versions: Sequence[VersionEntry]) -> list[VersionEntry]:
    by_tag: dict[str, VersionEntry] = {}
    for entry in versions:
        seen = by_tag.get(entry.tag)
        if seen is not None and seen != entry:
            raise ValueError(
                f"version tag {entry.tag!r} is listed twice with different contents "
                f"({seen} vs {entry}); pass each tag once"
            )
        by_tag[entry.tag] = entry
    return sorted(by_tag.values(), key=_version_key, reverse=True)


def render_versions(versions: list[VersionEntry]) -> str:
    """The Versions block, markers included: a table tag | date | fingerprint, newest first.

    Identical repeated entries are listed once; the same tag with different contents is an error.
    """
    ordered = _sorted_versions(versions)
    if not ordered:
        body = "_No version has been published yet._"
    else:
        rows = [[f"`{v.tag}`", v.date, f"`{v.fingerprint[:12]}`"] for v in ordered]
        body = md_table(["Tag", "Date", "Fingerprint"], rows)
    return f"{VERSIONS_START}\n{body}\n{VERSIONS_END}"


def replace_versions(readme: str, versions: list[VersionEntry]) -> str:
    """Swap the Versions block of ``readme`` for a fresh one; every other byte is kept as is."""
    n_start, n_end = readme.count(VERSIONS_START), readme.count(VERSIONS_END)
    if n_start != 1 or n_end != 1:
        raise ValueError(
            f"README must contain the markers {VERSIONS_START!r} and {VERSIONS_END!r} exactly once "
            f"each (found {n_start} and {n_end}); regenerate it with upft-build or restore the "
            "Versions section by hand"
        )
    start = readme.index(VERSIONS_START)
    end = readme.index(VERSIONS_END)
    if end < start:
        raise ValueError(
            f"README has {VERSIONS_END!r} before {VERSIONS_START!r}; put the end marker after "
            "the start marker or regenerate the card with upft-build"
        )
    return readme[:start] + render_versions(versions) + readme[end + len(VERSIONS_END) :]


# --- front matter ------------------------------------------------------------------------------


def card_metadata(
    manifest: Manifest,
    dataset_info: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The card's YAML front matter as a dict (keys in the order they are written).

    ``dataset_info`` (features, row counts and sizes per config, as the Hub writes it) is
    optional; besides documenting the schema it makes ``datasets`` cache each build separately.
    """
    meta: dict[str, Any] = {"pretty_name": manifest.name}
    if manifest.license:
        meta["license"] = manifest.license
    meta["language"] = list(manifest.language) or ["en"]
    meta["task_categories"] = ["text-generation"]
    meta["tags"] = list(TAGS)
    meta["size_categories"] = [size_category(manifest.counts.mixture_rows)]
    hub_ids = [s.id for s in manifest.sources if s.type == "hub" and s.id]
    if hub_ids:
        meta["source_datasets"] = list(dict.fromkeys(hub_ids))
    # The writer's configs, in its order; the first (the training mixture) is the default.
    meta["configs"] = [
        {
            "config_name": config,
            **({"default": True} if i == 0 else {}),
            "data_files": [{"split": "train", "path": f"data/{config}/*.parquet"}],
        }
        for i, config in enumerate(CONFIGS)
    ]
    if dataset_info:
        meta["dataset_info"] = dataset_info
    return meta


def _front_matter(manifest: Manifest, dataset_info: list[dict[str, Any]] | None = None) -> str:
    text = yaml.safe_dump(
        card_metadata(manifest, dataset_info), sort_keys=False, allow_unicode=True, width=1000
    )
    return f"---\n{text}---\n"


# --- the body ----------------------------------------------------------------------------------


def _where(src: SourceInfo) -> str:
    """Where one source's questions came from, in words with its identity."""
    if src.type == "hub":
        sid = str(src.id)
        parts = [f"config `{src.config}`"] if src.config else []
        if src.split:
            parts.append(f"split `{src.split}`")
        if src.revision:
            parts.append(f"revision `{src.revision[:12]}`")
        where = f" ({', '.join(parts)})" if parts else ""
        return f"the Hub dataset [`{sid}`](https://huggingface.co/datasets/{sid}){where}"
    text = f"the local file `{src.path}`"
    if src.sha256:
        text += f" (sha256 `{src.sha256[:12]}`)"
    return text


def _source_sentence(manifest: Manifest) -> str:
    sources = manifest.sources
    if len(sources) == 1:
        return _where(sources[0])
    listed = "; ".join(f"`{s.name}`, {_where(s)}" for s in sources)
    return (
        f"{len(sources)} sources, taken in this order: {listed}. A question whose normalised "
        "text an earlier source already gave was left out of the later one"
    )


def _sources_table(manifest: Manifest) -> str:
    """Per source: rows read, dropped by reason, and kept."""
    rows = [
        [
            f"`{s.name}`",
            fmt_int(c.read),
            fmt_int(c.empty),
            fmt_int(c.duplicate_within),
            fmt_int(c.duplicate_across),
            fmt_int(c.limited),
            fmt_int(c.too_long),
            fmt_int(c.kept),
        ]
        for s in manifest.sources
        for c in (s.counts,)
    ]
    headers = [
        "Source",
        "Read",
        "Empty",
        "Duplicate",
        "Of an earlier source",
        "Over limit",
        "Too long",
        "Kept",
    ]
    return md_table(headers, rows, align="lrrrrrrr")


def _curve_table(manifest: Manifest) -> str:
    means, stds = manifest.agreement.curve_mean, manifest.agreement.curve_std
    depth_max = min(len(means), len(stds))
    depths, d = [], 1
    while d < depth_max:
        depths.append(d)
        d *= 2
    if depth_max:
        depths.append(depth_max)
    rows = [[str(d), fmt_float(means[d - 1]), fmt_float(stds[d - 1])] for d in depths]
    return md_table(["Depth (tokens)", "Mean agreement", "Std"], rows, align="rrr")


def _tokens_table(manifest: Manifest) -> str:
    t = manifest.tokens
    rows = [
        ["Sampled in the prefix phase", fmt_int(t.prefix_phase)],
        ["Sampled in the full-trace phase", fmt_int(t.full_phase)],
        ["Sampled in total", fmt_int(t.total_sampled)],
    ]
    if t.rft_estimate is not None:
        rows.append(
            [
                f"RFT estimate ({t.rft_samples_per_question} full traces per question)",
                fmt_int(t.rft_estimate),
            ]
        )
        rows.append(["Saved against RFT", f"{float(t.reduction_pct or 0.0):.1f}%"])
    rows += [
        ["Trained on: prefix rows", fmt_int(t.tuning_tokens.prefix)],
        ["Trained on: full rows", fmt_int(t.tuning_tokens.full)],
        ["Trained on: total", fmt_int(t.tuning_tokens.total)],
    ]
    return md_table(["Tokens", "Count"], rows, align="lr")


_TIMING_LABELS = (
    ("source", "reading questions"),
    ("engine_load", "starting the engine"),
    ("prefix_phase", "prefix phase"),
    ("vote", "voting"),
    ("full_phase", "full-trace phase"),
    ("write", "writing"),
)


def _timing_sentence(manifest: Manifest) -> str:
    t = manifest.timings
    parts = [
        f"{label} {value:,.1f} s"
        for key, label in _TIMING_LABELS
        if (value := getattr(t, key)) is not None
    ]
    text = f"The build took {t.total:,.1f} s ({', '.join(parts)})."
    reused_p, reused_f = manifest.resume.prefix_shards_reused, manifest.resume.full_shards_reused
    if reused_p or reused_f:
        text += (
            f" It resumed an interrupted run, reusing {reused_p} prefix and {reused_f} full-trace "
            "shards."
        )
    return text


def _echo(manifest: Manifest) -> dict[str, str] | None:
    echo = manifest.instruction_echo
    if echo is None:
        return None
    return {
        "markers": ", ".join(f'"{m}"' for m in echo.markers),
        "prefix": _or_na(echo.prefix_samples, fmt_pct, 1),
        "full": _or_na(echo.full_traces, fmt_pct, 1),
        "prompt": echo.sample_prompt,
    }


def _served(manifest: Manifest) -> dict[str, Any] | None:
    """The served-model paragraph's parts (no credentials: the manifest holds none)."""
    engine = manifest.model.engine
    served = None if engine is None else engine.served
    if served is None:
        return None
    entry = served.models_entry or {}
    software = str(entry.get("owned_by") or "software not reported")
    if served.server_version:
        software += f" {served.server_version}"
    source = {
        "server": "Token ids are the server's own (token-exact prefixes).",
        "retokenized": "The server returned text only; its text was tokenised again with the "
        "model's tokenizer, so a prefix's token boundaries are the tokenizer's, not "
        "necessarily the server's.",
        "mixed": "Some token ids are the server's own and some come from tokenising its text "
        "again.",
    }.get(str(served.token_source), "")
    if served.seed_honoured:
        seeds = "Every request carried its own seed, and the server honoured seeds."
    elif served.seed_sent:
        seeds = "Every request carried its own seed, but the server did not honour seeds."
    else:
        seeds = "The server took no seeds."
    sent = "; ".join(
        f"{phase}: " + ", ".join(f"{k}={v}" for k, v in fields.items() if k != "seed")
        for phase, fields in served.sent.items()
    )
    t = served.traffic
    causes = ", ".join(f"{n} x {c}" for c, n in t.retry_causes.items())
    traffic = f"{fmt_int(t.requests)} requests, {fmt_int(t.retries)} retries" + (
        f" ({causes})." if causes else "."
    )
    return {
        "api": served.api,
        "host": served.host,
        "software": software,
        "name": served.served_name,
        "root": entry.get("root"),
        "context": entry.get("max_model_len"),
        "tokens": source,
        "seeds": seeds,
        "sent": sent or "nothing (every shard was reused)",
        "traffic": traffic,
    }


def _or_na(value: float | None, fmt: Callable[[float, int], str], decimals: int) -> str:
    # The builder writes null for an average over nothing (no question reached that point).
    return "n/a" if value is None else fmt(value, decimals)


def _card_context(manifest: Manifest, recipe_yaml: str, repo_id: str | None) -> dict[str, Any]:
    m = manifest
    repo = repo_id or m.repo_id or f"{PLACEHOLDER_ORG}/{m.name}"
    settings, tokens, agreement = m.settings, m.tokens, m.agreement
    context: dict[str, Any] = {
        "name": m.name,
        "description": quote(m.description or ""),
        "version": m.version,
        "tag": f"v{m.version}",
        "repo": repo,
        "repo_is_placeholder": repo.startswith(PLACEHOLDER_ORG + "/"),
        "date": m.build_date,
        "fingerprint": m.fingerprint[:12],
        "builder_version": m.builder_version,
        "model_id": m.model.id,
        "model_name": m.model.name if m.model.name != m.model.id else None,
        "model_revision": m.model.revision,
        "model_is_embedded": m.model.id.startswith("embedded:"),
        "backend": {
            "vllm": "vLLM",
            "transformers": "transformers",
            "openai": "a served model (OpenAI-compatible API)",
        }.get(m.backend, m.backend),
        "source": _source_sentence(m),
        "label_filter": settings.label_filter,
        "n_questions": fmt_int(m.counts.questions),
        "n_samples": settings.n_samples,
        "prefix_length": settings.prefix_length,
        "instruction": quote(settings.instruction),
        "system_prompt": quote(settings.system_prompt or ""),
        "recipe_yaml": recipe_yaml.rstrip("\n"),
        "mean_prefix_tokens": _or_na(agreement.mean_prefix_tokens, fmt_float, 1),
        "mean_at_L": _or_na(agreement.mean_at_L, fmt_float, 2),
        "mean_at_L_pct": _or_na(agreement.mean_at_L, fmt_pct, 0),
        "mean_full_trace_tokens": (
            None
            if tokens.mean_full_trace_tokens is None
            else fmt_float(tokens.mean_full_trace_tokens, 1)
        ),
        "has_rft": tokens.rft_estimate is not None,
        "rft_samples": tokens.rft_samples_per_question,
        "reduction": f"{float(tokens.reduction_pct or 0.0):.1f}%",
        "accuracy": None,
        "timing": _timing_sentence(m),
        "settings": settings,
        "counts": m.counts,
        "sources_table": _sources_table(m),
        "backend_id": m.backend,
        "curve_table": _curve_table(m),
        "tokens_table": _tokens_table(m),
        "echo": _echo(m),
        "served": _served(m),
    }
    if m.accuracy is not None:
        context["accuracy"] = {
            "checked": fmt_int(m.accuracy.checked),
            "correct": fmt_int(m.accuracy.correct),
            "pct": _or_na(m.accuracy.accuracy, fmt_pct, 1),
        }
    return context


@functools.lru_cache(maxsize=1)
def _template() -> Any:
    import jinja2

    source = importlib.resources.files("builder.cards").joinpath(TEMPLATE_NAME).read_text("utf-8")
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # markdown, not HTML
    )
    env.globals["table"] = md_table
    env.filters["thousands"] = fmt_int
    return env.from_string(source)


def render_card(
    manifest: Manifest,
    recipe_yaml: str,
    versions: list[VersionEntry] | None = None,
    repo_id: str | None = None,
    dataset_info: list[dict[str, Any]] | None = None,
) -> str:
    """The whole README.md: YAML front matter, then the card body from the packaged template.

    ``versions`` None lists just this build's own version; ``repo_id`` None falls back to
    ``manifest.repo_id`` and then to a ``<your-org>/<name>`` placeholder in the snippets;
    ``dataset_info`` goes into the front matter (see :func:`card_metadata`).
    """
    if not isinstance(manifest, Manifest):
        raise TypeError(
            f"render_card needs a builder.manifest.Manifest, not {type(manifest).__name__}; "
            "read the file with Manifest.read(path)"
        )
    if versions is None:
        versions = [
            VersionEntry(
                tag=f"v{manifest.version}",
                version=manifest.version,
                date=manifest.build_date,
                fingerprint=manifest.fingerprint,
            )
        ]
    context = _card_context(manifest, recipe_yaml, repo_id)
    context["versions_block"] = render_versions(versions)
    body = _template().render(**context)
    return _front_matter(manifest, dataset_info) + body
