"""Tests of builder.card: golden cards, front matter the Hub and datasets read, the Versions block.

Golden files live in tests/builder/golden/: card_file.md (local-file source, with accuracy,
versions=None, no repo id) and card_hub.md (Hub source, no gold answers, license null, a
system prompt, a resumed build, two versions, explicit repo id), rendered from manifest*.json +
recipe*.yaml. Those inputs are what real builds write (see test_manifest.py, which checks them
against a fresh build). After an intended change to the card or the manifest, regenerate both
and review the diff:

    UPFT_UPDATE_GOLDEN=1 pytest tests/builder/test_manifest.py tests/builder/test_card.py -k golden
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from builder.card import (
    VERSIONS_END,
    VERSIONS_START,
    VersionEntry,
    card_metadata,
    md_table,
    render_card,
    render_versions,
    replace_versions,
    size_category,
)
from builder.manifest import Manifest

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("UPFT_UPDATE_GOLDEN") == "1"

V010 = VersionEntry("v0.1.0", "0.1.0", "2026-11-26", "3f9a1c07d2b8" + "4" * 52)
V020 = VersionEntry("v0.2.0", "0.2.0", "2026-12-03", "a1b2c3d4e5f6" + "0" * 52)
# name -> (manifest file, recipe file, versions, repo_id)
VARIANTS = {
    "file": ("manifest.json", "recipe.yaml", None, None),
    "hub": ("manifest_hub.json", "recipe_hub.yaml", [V010, V020], "acme/word-problems-upft"),
}


def manifest(name: str = "manifest.json") -> Manifest:
    """A fresh copy of a golden manifest (tests change its attributes)."""
    return Manifest.read(GOLDEN / name)


def render_variant(variant: str) -> str:
    manifest_file, recipe_file, versions, repo_id = VARIANTS[variant]
    recipe = (GOLDEN / recipe_file).read_text("utf-8")
    return render_card(manifest(manifest_file), recipe, versions=versions, repo_id=repo_id)


def front_matter(card: str) -> str:
    assert card.startswith("---\n")
    return card[: card.index("\n---\n", 4) + 5]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_golden_card(variant: str) -> None:
    rendered = render_variant(variant)
    golden = GOLDEN / f"card_{variant}.md"
    if UPDATE_GOLDEN:
        golden.write_text(rendered, encoding="utf-8", newline="\n")
    assert golden.exists(), f"{golden} missing; create it with UPFT_UPDATE_GOLDEN=1"
    assert rendered == golden.read_text("utf-8")


def test_render_is_deterministic_and_ends_with_one_newline() -> None:
    first, second = render_variant("file"), render_variant("file")
    assert first == second
    assert first.endswith("```\n") and not first.endswith("\n\n")
    assert not [line for line in first.splitlines() if line != line.rstrip()]


def glued_lines(card: str) -> list[str]:
    """Prose lines that directly follow another prose line outside code blocks.

    A hit means a template tag ate the blank line between two paragraphs.
    """
    body = card[len(front_matter(card)) :]
    in_code, previous_prose, glued = False, False, []
    for line in body.splitlines():
        if line.startswith("```"):
            in_code, previous_prose = not in_code, False
            continue
        prose = not in_code and line[:1].isalpha()
        if prose and previous_prose:
            glued.append(line[:40])
        previous_prose = prose
    return glued


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_prose_paragraphs_are_separated(variant: str) -> None:
    assert glued_lines(render_variant(variant)) == []


def test_front_matter_parses_with_datasetcard() -> None:
    from huggingface_hub import DatasetCard

    data = DatasetCard(render_variant("file")).data.to_dict()
    assert [c["config_name"] for c in data["configs"]] == ["mixture", "prefixes", "traces"]
    assert data["configs"][0]["default"] is True
    assert "default" not in data["configs"][1] and "default" not in data["configs"][2]
    assert data["configs"][1]["data_files"] == [
        {"split": "train", "path": "data/prefixes/*.parquet"}
    ]
    assert data["license"] == "apache-2.0"
    assert data["size_categories"] == ["n<1K"]
    assert data["task_categories"] == ["text-generation"]
    assert "source_datasets" not in data

    hub = DatasetCard(render_variant("hub")).data.to_dict()
    assert "license" not in hub
    assert hub["source_datasets"] == ["upft-org/word-problems"]
    assert hub["size_categories"] == ["n<1K"]
    assert hub["pretty_name"] == "word-problems-upft"


def test_card_metadata_exact() -> None:
    assert card_metadata(manifest()) == {
        "pretty_name": "demo-upft",
        "license": "apache-2.0",
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["upft", "math", "reasoning", "synthetic", "prefix-fine-tuning"],
        "size_categories": ["n<1K"],
        "configs": [
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
        ],
    }


def test_language_defaults_to_english() -> None:
    m = manifest()
    m.language = []
    assert card_metadata(m)["language"] == ["en"]
    m.language = ["fr", "de"]
    assert card_metadata(m)["language"] == ["fr", "de"]


def test_load_dataset_finds_the_three_configs(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    version_dir = tmp_path / "demo-upft" / "0.1.0"
    tables = {
        "mixture": {"question_id": ["demo-001", "demo-002"], "kind": ["prefix", "full"]},
        "prefixes": {
            "question_id": ["demo-001", "demo-002", "demo-003"],
            "prefix_tokens": [3, 5, 7],
        },
        "traces": {"question_id": ["demo-001"], "phase": ["prefix"], "num_tokens": [32]},
    }
    for config, columns in tables.items():
        (version_dir / "data" / config).mkdir(parents=True)
        pq.write_table(
            pa.table(columns), version_dir / "data" / config / "train-00000-of-00001.parquet"
        )
    (version_dir / "README.md").write_text(render_variant("file"), encoding="utf-8")

    cache = str(tmp_path / "cache")
    for config, columns in tables.items():
        loaded = datasets.load_dataset(str(version_dir), config, cache_dir=cache)
        assert list(loaded) == ["train"]
        assert loaded["train"].to_dict() == columns
    default = datasets.load_dataset(str(version_dir), cache_dir=cache)
    assert default["train"].to_dict() == tables["mixture"]


@pytest.mark.parametrize(
    ("rows", "bucket"),
    [
        (0, "n<1K"),
        (999, "n<1K"),
        (1_000, "1K<n<10K"),
        (9_999, "1K<n<10K"),
        (10_000, "10K<n<100K"),
        (99_999, "10K<n<100K"),
        (100_000, "100K<n<1M"),
        (1_000_000, "1M<n<10M"),
        (10**8, "100M<n<1B"),
        (10**12 - 1, "100B<n<1T"),
        (10**12, "n>1T"),
    ],
)
def test_size_category_buckets(rows: int, bucket: str) -> None:
    assert size_category(rows) == bucket


def test_size_category_follows_the_mixture_rows() -> None:
    m = manifest()
    m.counts.mixture_rows = 1_000
    assert card_metadata(m)["size_categories"] == ["1K<n<10K"]
    with pytest.raises(ValueError, match="-1"):
        size_category(-1)


def test_render_versions_newest_first() -> None:
    entries = [
        VersionEntry("v0.2.0", "0.2.0", "2026-01-02", "2" * 64),
        VersionEntry("v0.10.0", "0.10.0", "2026-03-01", "a" * 64),
        VersionEntry("v1.0.0", "1.0.0", "2026-04-01", "1" * 64),
        VersionEntry("v0.9.1", "0.9.1", "2026-02-01", "9" * 64),
    ]
    block = render_versions(entries)
    tags = [line.split("`")[1] for line in block.splitlines() if line.startswith("| `")]
    assert tags == ["v1.0.0", "v0.10.0", "v0.9.1", "v0.2.0"]  # numeric, not string, order


def test_render_versions_exact_block() -> None:
    assert render_versions([V010, V020]) == (
        f"{VERSIONS_START}\n"
        "| Tag      | Date       | Fingerprint    |\n"
        "| -------- | ---------- | -------------- |\n"
        "| `v0.2.0` | 2026-12-03 | `a1b2c3d4e5f6` |\n"
        "| `v0.1.0` | 2026-11-26 | `3f9a1c07d2b8` |\n"
        f"{VERSIONS_END}"
    )
    assert render_versions([]) == (
        f"{VERSIONS_START}\n_No version has been published yet._\n{VERSIONS_END}"
    )


def test_render_versions_repeated_tags() -> None:
    assert render_versions([V010, V020, V010]) == render_versions([V020, V010])
    other = VersionEntry("v0.1.0", "0.1.0", "2026-11-27", V010.fingerprint)
    with pytest.raises(ValueError, match="'v0.1.0' is listed twice"):
        render_versions([V010, other])


def test_replace_versions_changes_only_the_block() -> None:
    card = render_variant("file")
    updated = replace_versions(card, [V010, V020])
    start, end = card.index(VERSIONS_START), card.index(VERSIONS_END) + len(VERSIONS_END)
    new_start = updated.index(VERSIONS_START)
    new_end = updated.index(VERSIONS_END) + len(VERSIONS_END)
    assert updated[:new_start] == card[:start]
    assert updated[new_end:] == card[end:]
    assert updated[new_start:new_end] == render_versions([V020, V010])
    assert "`v0.2.0` | 2026-12-03" in updated and "`v0.2.0`" not in card
    # The card push-to-hub uploads equals what upft-build would render with the full list.
    m = manifest()
    recipe = (GOLDEN / "recipe.yaml").read_text("utf-8")
    assert updated == render_card(m, recipe, versions=[V010, V020])
    assert replace_versions(updated, [V010]) == card


def test_replace_versions_keeps_arbitrary_surroundings() -> None:
    readme = f"a\r\n{VERSIONS_START}old | stuff{VERSIONS_END}\ttail ü\n"
    assert replace_versions(readme, [V010]) == f"a\r\n{render_versions([V010])}\ttail ü\n"


@pytest.mark.parametrize(
    ("readme", "message"),
    [
        ("# card without markers\n", "found 0 and 0"),
        (f"{VERSIONS_START}\nno end\n", "found 1 and 0"),
        (f"no start\n{VERSIONS_END}\n", "found 0 and 1"),
        (f"{VERSIONS_START}{VERSIONS_END}{VERSIONS_START}{VERSIONS_END}", "found 2 and 2"),
        (f"{VERSIONS_END}\n{VERSIONS_START}\n", "before"),
    ],
)
def test_replace_versions_rejects_bad_markers(readme: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace_versions(readme, [V010])


def test_versions_default_to_the_build_itself() -> None:
    card = render_variant("file")
    block = card[card.index(VERSIONS_START) : card.index(VERSIONS_END) + len(VERSIONS_END)]
    m = manifest()
    assert block == render_versions([VersionEntry("v0.1.0", "0.1.0", "2026-11-26", m.fingerprint)])


def test_repo_id_in_snippets() -> None:
    m = manifest()
    recipe = (GOLDEN / "recipe.yaml").read_text("utf-8")
    placeholder = render_card(m, recipe)
    assert 'load_dataset("<your-org>/demo-upft", "mixture", revision="v0.1.0")' in placeholder
    assert "Replace `<your-org>/demo-upft` below" in placeholder
    assert (
        "upft-train --dataset <your-org>/demo-upft --revision v0.1.0 --model fake-model "
        "--output runs/x" in placeholder
    )
    m.repo_id = "team/from-manifest"
    from_manifest = render_card(m, recipe)
    assert 'load_dataset("team/from-manifest", "mixture", revision="v0.1.0")' in from_manifest
    assert "Replace `" not in from_manifest
    explicit = render_card(m, recipe, repo_id="team/explicit")
    assert 'load_dataset("team/explicit", "mixture", revision="v0.1.0")' in explicit
    assert "team/from-manifest" not in explicit


def test_sections_in_order_and_conditional_parts() -> None:
    card = render_variant("file")
    headings = [line for line in card.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Use it",
        "## Subsets and columns",
        "## How it was built",
        "## Statistics",
        "## Prefix self-consistency",
        "## Versions",
        "## Limitations",
        "## Citation",
    ]
    assert "![Prefix self-consistency](assets/agreement.png)" in card
    assert "](assets/agreement_hist.png)" in card
    assert "Answer accuracy of the complete answers: 2 of 5 reached the gold answer (40.0%)" in card
    assert "| gold_answer " in card and "| is_correct " in card
    assert "| RFT estimate (16 full traces per question) | 15,696 |" in card
    assert "1 question(s) needed more than one try for a complete answer" in card
    assert "| `apples` |   13 |     0 |         1 |                    0 |" in card
    assert "| `more`   |    5 |     0 |         0 |                    1 |          1 |" in card
    assert "<summary>Full resolved recipe (recipe.yaml)</summary>" in card
    assert "```yaml\n" + (GOLDEN / "recipe.yaml").read_text("utf-8") + "```\n" in card
    assert "@inproceedings{ji2025first," in card and "eprint        = {2503.02875}," in card

    hub = render_variant("hub")
    assert "Answer accuracy" not in hub
    assert "| top_p                | 0.95 " in hub and "| top_k                | 20 " in hub
    assert "The build took 37.9 s (reading questions 0.4 s, prefix phase 12.5 s" in hub
    assert "starting the engine" not in hub  # the test's engine was loaded before the build
    assert "used the paper's label filter" not in hub and "| label_filter         | no " in hub
    assert "> You are a careful math tutor. Reason step by step." in hub
    assert "reusing 2 prefix and 0 full-trace shards" in hub
    assert "| RFT estimate (16 full traces per question) | 9,760 |" in hub
    assert (
        "[`upft-org/word-problems`](https://huggingface.co/datasets/upft-org/word-problems) "
        "(split `train`, revision `e53f048856ff`)" in hub
    )


def test_optional_values_read_as_the_card_says() -> None:
    m = manifest("manifest_hub.json")
    m.settings.top_p = None
    m.timings.engine_load = 21.94
    card = render_card(m, "")
    assert "| top_p                | model default " in card
    assert "prefix phase 12.5 s, starting the engine" not in card
    assert "reading questions 0.4 s, starting the engine 21.9 s, prefix phase 12.5 s" in card


def test_the_card_takes_only_a_validated_manifest() -> None:
    # A bad or missing field is an error where the manifest is read (test_manifest.py), never
    # half way through the template.
    with pytest.raises(TypeError, match=r"needs a builder.manifest.Manifest, not dict.*\.read"):
        render_card(manifest().to_dict(), "")  # type: ignore[arg-type]
    m = manifest()
    with pytest.raises(ValidationError, match="created_at"):
        m.created_at = "yesterday"
    with pytest.raises(ValidationError, match="top_k"):
        m.settings.top_k = "20"  # type: ignore[assignment]


def test_md_table_pads_aligns_and_escapes() -> None:
    assert md_table(["Name", "N"], [["a|b", "1,000"], ["c", "7"]], align="lr") == "\n".join(
        [
            "| Name |     N |",
            "| ---- | ----: |",
            "| a\\|b | 1,000 |",
            "| c    |     7 |",
        ]
    )
    with pytest.raises(ValueError, match="has 1 cells, expected 2"):
        md_table(["a", "b"], [["only one"]])


def test_multiline_texts_stay_inside_their_blockquotes() -> None:
    m = manifest()
    m.description = "First line.\n\nSecond paragraph."
    m.settings.instruction = "Only the first step.\nStop there."
    card = render_card(m, "")
    assert "> First line.\n>\n> Second paragraph.\n" in card
    assert "> Only the first step.\n> Stop there.\n" in card


def test_label_filter_is_described() -> None:
    m = manifest()
    s = m.settings
    s.label_filter, s.label_filter_samples, s.label_filter_on_no_correct = True, 16, "drop"
    m.counts.label_filter_dropped = 2
    card = render_card(m, "")
    assert "so it is not label-free" in card
    assert "| label_filter         | yes, drop when none is correct " in card
    assert "reaching the gold answer for 2 question(s): they were dropped." in card
    assert "The label filter used these checks to pick the answer each prefix is cut from." in card
    assert "needed more than one try" not in card
    assert glued_lines(card) == []
    s.label_filter_on_no_correct = "unfiltered"
    m.counts.label_filter_dropped, m.counts.label_filter_unfiltered = 0, 3
    card = render_card(m, "")
    assert "for 3 question(s): they kept the prefix of their first answer, unfiltered." in card


def test_averages_over_nothing_read_n_a() -> None:
    m = manifest()
    a = m.agreement
    a.mean_at_L, a.mean_prefix_tokens, a.curve_mean, a.curve_std = None, None, [], []
    card = render_card(m, "")
    assert "The chosen prefixes are n/a tokens long on average" in card
    assert "on average n/a of a question's 8 samples" in card
