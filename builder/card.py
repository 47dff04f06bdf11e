"""The dataset card (README.md) of a built UPFT dataset version.

Where it sits: at the end of ``upft-build`` the writer calls :func:`render_card` with the
manifest it has just written and the resolved recipe, and puts the result in the version
directory as README.md. ``push-to-hub`` later calls :func:`replace_versions` to refresh only
the Versions section (the block between :data:`VERSIONS_START` and :data:`VERSIONS_END`) with
the tags already on the Hub; every other byte of the card stays as the builder wrote it.

Everything here is a pure function of its arguments -- the only I/O is reading the Jinja2
template shipped in ``builder.cards`` -- so one manifest always gives the same bytes. The
golden tests and push-to-hub's "already published?" comparison rely on that.

Numbers are formatted here (thousands separators, one or two decimals) and tables are padded
by :func:`md_table` so the raw markdown reads aligned; the template gets ``md_table`` as
``table`` for its static tables and arranges the prose around the pieces.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

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
    commit: str | None = None


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


# --- manifest access ---------------------------------------------------------------------------

_MISSING = object()

# Everything the card reads without a fallback; checked up front so that a hand-edited or
# older manifest fails with the key's name rather than deep inside the template.
REQUIRED_KEYS = (
    "name", "version", "fingerprint", "builder_version", "created_at", "backend",
    "source.type", "source.counts.read", "source.counts.empty",
    "source.counts.duplicate", "source.counts.limited", "source.counts.kept", "model.id",
    "settings.n_samples", "settings.prefix_length", "settings.vote", "settings.min_agreement",
    "settings.full_trace_ratio", "settings.full_trace_from", "settings.label_filter",
    "settings.temperature", "settings.top_p", "settings.top_k", "settings.max_tokens",
    "settings.seed", "settings.instruction", "settings.sample_prompt", "settings.full_trace_tries",
    "counts.full_trace_resampled", "counts.full_trace_fallback",
    "counts.questions", "counts.prefix_rows",
    "counts.full_rows", "counts.mixture_rows", "counts.trace_rows", "tokens.prefix_phase",
    "tokens.full_phase", "tokens.total_sampled", "tokens.tuning_tokens.prefix",
    "tokens.tuning_tokens.full", "tokens.tuning_tokens.total", "agreement.mean_at_L",
    "agreement.mean_prefix_tokens", "agreement.curve_mean", "agreement.curve_std",
)  # fmt: skip


def _get(manifest: dict, dotted: str, default: Any = _MISSING) -> Any:
    """``manifest['a']['b']`` for ``'a.b'``, with an error that names the missing key."""
    node: Any = manifest
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not _MISSING:
                return default
            raise ValueError(
                f"manifest has no {dotted!r} (missing {part!r}); the card needs the manifest.json "
                "that upft-build writes -- rebuild the dataset version instead of editing it"
            )
        node = node[part]
    return node


def _build_date(manifest: dict) -> str:
    created = str(_get(manifest, "created_at"))
    if not re.match(r"\d{4}-\d{2}-\d{2}", created):
        raise ValueError(
            f"manifest created_at {created!r} does not start with a YYYY-MM-DD date; "
            "expected an ISO 8601 timestamp such as 2026-11-26T19:30:00Z"
        )
    return created[:10]


def _languages(manifest: dict) -> list[str]:
    language = manifest.get("language") or ["en"]
    return [language] if isinstance(language, str) else list(language)


# --- front matter ------------------------------------------------------------------------------


def card_metadata(manifest: dict, dataset_info: list[dict] | None = None) -> dict:
    """The card's YAML front matter as a dict (keys in the order they are written).

    ``dataset_info`` (features, row counts and sizes per config, as the Hub writes it) is
    optional; besides documenting the schema it makes ``datasets`` cache each build separately.
    """
    meta: dict[str, Any] = {"pretty_name": str(_get(manifest, "name"))}
    if manifest.get("license"):
        meta["license"] = manifest["license"]
    meta["language"] = _languages(manifest)
    meta["task_categories"] = ["text-generation"]
    meta["tags"] = list(TAGS)
    meta["size_categories"] = [size_category(int(_get(manifest, "counts.mixture_rows")))]
    if _get(manifest, "source.type") == "hub":
        meta["source_datasets"] = [str(_get(manifest, "source.id"))]
    meta["configs"] = [
        {
            "config_name": "mixture",
            "default": True,
            "data_files": [{"split": "train", "path": "data/mixture/*.parquet"}],
        },
        {
            "config_name": "prefixes",
            "data_files": [{"split": "train", "path": "data/prefixes/*.parquet"}],
        },
        {
            "config_name": "traces",
            "data_files": [{"split": "train", "path": "data/traces/*.parquet"}],
        },
    ]
    if dataset_info:
        meta["dataset_info"] = dataset_info
    return meta


def _front_matter(manifest: dict, dataset_info: list[dict] | None = None) -> str:
    text = yaml.safe_dump(card_metadata(manifest, dataset_info), sort_keys=False,
                          allow_unicode=True, width=1000)
    return f"---\n{text}---\n"


# --- the body ----------------------------------------------------------------------------------


def _source_sentence(manifest: dict) -> str:
    src = _get(manifest, "source")
    if src.get("type") == "hub":
        sid = str(_get(manifest, "source.id"))
        parts = [f"config `{src['config']}`"] if src.get("config") else []
        if src.get("split"):
            parts.append(f"split `{src['split']}`")
        if src.get("revision"):
            parts.append(f"revision `{str(src['revision'])[:12]}`")
        where = f" ({', '.join(parts)})" if parts else ""
        return f"the Hub dataset [`{sid}`](https://huggingface.co/datasets/{sid}){where}"
    text = f"the local file `{_get(manifest, 'source.path')}`"
    if src.get("sha256"):
        text += f" (sha256 `{str(src['sha256'])[:12]}`)"
    return text


def _curve_table(manifest: dict) -> str:
    means = list(_get(manifest, "agreement.curve_mean"))
    stds = list(_get(manifest, "agreement.curve_std"))
    depth_max = min(len(means), len(stds))
    depths, d = [], 1
    while d < depth_max:
        depths.append(d)
        d *= 2
    if depth_max:
        depths.append(depth_max)
    rows = [[str(d), fmt_float(means[d - 1]), fmt_float(stds[d - 1])] for d in depths]
    return md_table(["Depth (tokens)", "Mean agreement", "Std"], rows, align="rrr")


def _tokens_table(manifest: dict) -> str:
    t = _get(manifest, "tokens")
    tuning = _get(manifest, "tokens.tuning_tokens")
    rows = [
        ["Sampled in the prefix phase", fmt_int(t["prefix_phase"])],
        ["Sampled in the full-trace phase", fmt_int(t["full_phase"])],
        ["Sampled in total", fmt_int(t["total_sampled"])],
    ]
    if t.get("rft_estimate") is not None:
        rows.append(
            [
                f"RFT estimate ({t['rft_samples_per_question']} full traces per question)",
                fmt_int(t["rft_estimate"]),
            ]
        )
        rows.append(["Saved against RFT", f"{float(t['reduction_pct']):.1f}%"])
    rows += [
        ["Trained on: prefix rows", fmt_int(tuning["prefix"])],
        ["Trained on: full rows", fmt_int(tuning["full"])],
        ["Trained on: total", fmt_int(tuning["total"])],
    ]
    return md_table(["Tokens", "Count"], rows, align="lr")


def _timing_sentence(manifest: dict) -> str:
    t = _get(manifest, "timings", None) or {}
    if "total" not in t:
        return ""
    parts = [
        f"{label} {float(t[key]):,.1f} s"
        for key, label in [
            ("source", "reading questions"),
            ("model", "loading the model"),
            ("engine_load", "starting the engine"),
            ("prefix_phase", "prefix phase"),
            ("vote", "voting"),
            ("full_phase", "full-trace phase"),
            ("write", "writing"),
        ]
        if key in t
    ]
    text = f"The build took {float(t['total']):,.1f} s ({', '.join(parts)})."
    resume = _get(manifest, "resume", None) or {}
    reused_p, reused_f = resume.get("prefix_shards_reused", 0), resume.get("full_shards_reused", 0)
    if reused_p or reused_f:
        text += (
            f" It resumed an interrupted run, reusing {reused_p} prefix and {reused_f} full-trace "
            "shards."
        )
    return text


def _echo(manifest: dict) -> dict[str, str] | None:
    echo = manifest.get("instruction_echo")
    if not echo:
        return None
    return {
        "markers": ", ".join(f'"{m}"' for m in echo.get("markers") or []),
        "prefix": _or_na(echo.get("prefix_samples"), fmt_pct, 1),
        "full": _or_na(echo.get("full_traces"), fmt_pct, 1),
        "prompt": str(echo.get("sample_prompt")),
    }


def _or_na(value: Any, fmt: Any, decimals: int) -> str:
    # The builder writes null for an average over nothing (no question reached that point).
    return "n/a" if value is None else str(fmt(value, decimals))


def _card_context(manifest: dict, recipe_yaml: str, repo_id: str | None) -> dict[str, Any]:
    for key in REQUIRED_KEYS:
        _get(manifest, key)
    if _get(manifest, "settings.label_filter"):
        _get(manifest, "counts.label_filter_dropped")
        _get(manifest, "counts.label_filter_unfiltered")
    name = str(_get(manifest, "name"))
    version = str(_get(manifest, "version"))
    repo = repo_id or manifest.get("repo_id") or f"{PLACEHOLDER_ORG}/{name}"
    model_id = str(_get(manifest, "model.id"))
    model_name = _get(manifest, "model.name", None)
    settings = _get(manifest, "settings")
    tokens = _get(manifest, "tokens")
    agreement = _get(manifest, "agreement")
    accuracy = manifest.get("accuracy")
    backend = str(_get(manifest, "backend"))
    context: dict[str, Any] = {
        "name": name,
        "description": quote(manifest.get("description") or ""),
        "version": version,
        "tag": f"v{version}",
        "repo": repo,
        "repo_is_placeholder": repo.startswith(PLACEHOLDER_ORG + "/"),
        "date": _build_date(manifest),
        "fingerprint": str(_get(manifest, "fingerprint"))[:12],
        "builder_version": str(_get(manifest, "builder_version")),
        "model_id": model_id,
        "model_name": model_name if model_name and model_name != model_id else None,
        "model_revision": _get(manifest, "model.revision", None),
        "model_is_embedded": model_id.startswith("embedded:"),
        "backend": {"vllm": "vLLM", "transformers": "transformers"}.get(backend, backend),
        "source": _source_sentence(manifest),
        "label_filter": bool(settings.get("label_filter")),
        "n_questions": fmt_int(_get(manifest, "counts.questions")),
        "n_samples": int(settings["n_samples"]),
        "prefix_length": int(settings["prefix_length"]),
        "instruction": quote(settings.get("instruction") or ""),
        "system_prompt": quote(settings.get("system_prompt") or ""),
        "recipe_yaml": recipe_yaml.rstrip("\n"),
        "mean_prefix_tokens": _or_na(agreement["mean_prefix_tokens"], fmt_float, 1),
        "mean_at_L": _or_na(agreement["mean_at_L"], fmt_float, 2),
        "mean_at_L_pct": _or_na(agreement["mean_at_L"], fmt_pct, 0),
        "mean_full_trace_tokens": (
            None
            if tokens.get("mean_full_trace_tokens") is None
            else fmt_float(tokens["mean_full_trace_tokens"], 1)
        ),
        "has_rft": tokens.get("rft_estimate") is not None,
        "rft_samples": tokens.get("rft_samples_per_question"),
        "reduction": f"{float(tokens.get('reduction_pct') or 0.0):.1f}%",
        "accuracy": None,
        "timing": _timing_sentence(manifest),
        "settings": settings,
        "counts": _get(manifest, "counts"),
        "source_counts": _get(manifest, "source.counts"),
        "backend_id": backend,
        "curve_table": _curve_table(manifest),
        "tokens_table": _tokens_table(manifest),
        "echo": _echo(manifest),
    }
    if accuracy:
        context["accuracy"] = {
            "checked": fmt_int(accuracy["checked"]),
            "correct": fmt_int(accuracy["correct"]),
            "pct": fmt_pct(accuracy["accuracy"]),
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
    manifest: dict,
    recipe_yaml: str,
    versions: list[VersionEntry] | None = None,
    repo_id: str | None = None,
    dataset_info: list[dict] | None = None,
) -> str:
    """The whole README.md: YAML front matter, then the card body from the packaged template.

    ``versions`` None lists just this build's own version; ``repo_id`` None falls back to
    ``manifest["repo_id"]`` and then to a ``<your-org>/<name>`` placeholder in the snippets;
    ``dataset_info`` goes into the front matter (see :func:`card_metadata`).
    """
    version = str(_get(manifest, "version"))
    if versions is None:
        versions = [
            VersionEntry(
                tag=f"v{version}",
                version=version,
                date=_build_date(manifest),
                fingerprint=str(_get(manifest, "fingerprint")),
            )
        ]
    context = _card_context(manifest, recipe_yaml, repo_id)
    context["versions_block"] = render_versions(versions)
    body = _template().render(**context)
    return _front_matter(manifest, dataset_info) + body
