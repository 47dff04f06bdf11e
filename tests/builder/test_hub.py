"""push-to-hub (builder/hub.py and the CLI) against the Hub-protocol test server.

The real huggingface_hub client publishes, and the real ``datasets`` library loads what was
published in a fresh process with an empty cache. Version directories are written here with
pyarrow; they have the layout upft-build produces (see builder/writer.py).
"""

from __future__ import annotations

import hashlib
import json
import struct
import textwrap
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tests.hubserver import (
    ALICE,
    BOB,
    HubServer,
    client_env,
    configure_process_env,
    run_client,
)

configure_process_env()  # before anything imports huggingface_hub (see tests/hubserver)

from builder.card import VERSIONS_END, VERSIONS_START  # noqa: E402
from builder.cli import push_main  # noqa: E402
from builder.errors import PublishError  # noqa: E402
from builder.hub import push_version  # noqa: E402
from builder.hubclient import RETRY_ATTEMPTS_ENV  # noqa: E402

CONFIGS = ("mixture", "prefixes", "traces")
REPO = "alice/demo-upft"
CARD = textwrap.dedent("""\
    ---
    license: apache-2.0
    tags:
    - upft
    configs:
    - config_name: mixture
      data_files:
      - split: train
        path: data/mixture/*.parquet
      default: true
    - config_name: prefixes
      data_files:
      - split: train
        path: data/prefixes/*.parquet
    - config_name: traces
      data_files:
      - split: train
        path: data/traces/*.parquet
    ---
    # demo-upft {version}

    ## Versions

    <!-- upft:versions:start -->
    _No version has been published yet._
    <!-- upft:versions:end -->

    ## Citation
    ji2025first
    """)


def tiny_png(shade: int) -> bytes:
    """A valid 1x1 grey PNG (the builder's plots are PNGs too; they must go through LFS)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(bytes([0, shade]))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def make_version(
    base: Path, version: str, *, seed: int = 0, repo_id: str | None = REPO, private: bool = False
) -> Path:
    """A complete version directory ``base/demo-upft/<version>`` whose rows depend on seed."""
    root = base / "demo-upft" / version
    for n, config in enumerate(CONFIGS):
        (root / "data" / config).mkdir(parents=True)
        ids = [f"q{seed}-{i}" for i in range(3 + n)]
        table = pa.table(
            {
                "question_id": ids,
                "text": [f"{config} {seed} {i}" for i in ids],
                "num_tokens": pa.array([len(i) + seed for i in ids], pa.int32()),
            }
        )
        pq.write_table(table, root / "data" / config / "train-00000-of-00001.parquet")
    (root / "assets").mkdir()
    (root / "assets" / "agreement.png").write_bytes(tiny_png(seed))
    (root / "assets" / "agreement_hist.png").write_bytes(tiny_png(seed + 100))
    publish = {"repo_id": repo_id, "private": private} if repo_id else {}
    recipe = {"name": "demo-upft", "version": version, "publish": publish}
    (root / "recipe.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    fingerprint = hashlib.sha256(f"{version}/{seed}".encode()).hexdigest()
    manifest = {
        "name": "demo-upft",
        "version": version,
        "fingerprint": fingerprint,
        "created_at": f"2026-11-{20 + seed}T10:00:00Z",
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (root / "README.md").write_text(CARD.format(version=version))
    return root


def local_rows(version_dir: Path, config: str) -> list[dict[str, Any]]:
    return pq.read_table(version_dir / "data" / config / "train-00000-of-00001.parquet").to_pylist()


def load_in_fresh_process(
    hub: HubServer, home: Path, loads: dict[str, tuple[str, str]], token: str | None = None
) -> dict[str, Any]:
    """``{key: (config, revision)}`` -> rows, loaded by ``datasets`` with an empty HF_HOME."""
    code = textwrap.dedent(f"""\
        import json, datasets
        loads = {loads!r}
        print(json.dumps({{key: datasets.load_dataset({REPO!r}, config, revision=rev)["train"]
                          .to_list() for key, (config, rev) in loads.items()}}))
        """)
    done = run_client(code, client_env(hub.url, home, token=token))
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def api(token: str | bool | None = ALICE) -> Any:
    from huggingface_hub import HfApi

    return HfApi(token=token)


def refs(repo_id: str = REPO) -> tuple[dict[str, str], dict[str, str]]:
    found = api().list_repo_refs(repo_id, repo_type="dataset")
    return (
        {b.name: b.target_commit for b in found.branches},
        {t.name: t.target_commit for t in found.tags},
    )


def card_at(revision: str) -> str:
    path = api().hf_hub_download(REPO, "README.md", repo_type="dataset", revision=revision)
    return Path(path).read_text()


def test_push_then_load_every_config_in_a_fresh_process(hub: HubServer, tmp_path: Path) -> None:
    version_dir = make_version(tmp_path, "1.0.0")
    result = push_version(version_dir, token=ALICE)

    assert result.status == "pushed" and result.repo_id == REPO and result.tag == "v1.0.0"
    assert result.url == f"{hub.url}/datasets/{REPO}/tree/v1.0.0"
    assert refs() == ({"main": result.commit}, {"v1.0.0": result.commit})
    assert len(hub.calls("commit")) == 1  # the whole directory in one commit
    tree = {
        f.path: f
        for f in api().list_repo_tree(REPO, repo_type="dataset", recursive=True, revision="v1.0.0")
        if hasattr(f, "size")
    }
    assert sorted(tree) == sorted([".gitattributes", *(f.path for f in result.files)])
    for path in ("data/mixture/train-00000-of-00001.parquet", "assets/agreement.png"):
        assert tree[path].lfs is not None
        content = (version_dir / path).read_bytes()
        assert tree[path].lfs.sha256 == hashlib.sha256(content).hexdigest()
    assert tree["manifest.json"].lfs is None and tree["README.md"].lfs is None

    rows = load_in_fresh_process(hub, tmp_path / "home", {c: (c, "v1.0.0") for c in CONFIGS})
    for config in CONFIGS:
        assert rows[config] == local_rows(version_dir, config)

    from huggingface_hub import DatasetCard

    card = DatasetCard(card_at("v1.0.0"))
    configs = card.data.to_dict()["configs"]
    assert [c["config_name"] for c in configs] == list(CONFIGS)
    assert configs[1]["data_files"] == [{"split": "train", "path": "data/prefixes/*.parquet"}]
    assert "| `v1.0.0` | 2026-11-20 | `" + hashlib.sha256(b"1.0.0/0").hexdigest()[:12] in card.text
    # only the Versions section differs from the local card
    local = (version_dir / "README.md").read_text()
    published = card_at("v1.0.0")
    assert published.split(VERSIONS_START)[0] == local.split(VERSIONS_START)[0]
    assert published.split(VERSIONS_END)[1] == local.split(VERSIONS_END)[1]


def test_second_version_keeps_both_tags_loadable(hub: HubServer, tmp_path: Path) -> None:
    first = make_version(tmp_path, "1.0.0", seed=0)
    (first / "assets" / "old-plot.png").write_bytes(tiny_png(7))  # not in the next version
    one = push_version(first, token=ALICE)
    second = make_version(tmp_path, "1.1.0", seed=1)
    two = push_version(second, token=ALICE, message="second build")

    assert one.commit != two.commit
    assert refs() == ({"main": two.commit}, {"v1.0.0": one.commit, "v1.1.0": two.commit})
    assert api().list_repo_commits(REPO, repo_type="dataset")[0].title == "second build"
    at_two = {f.path for f in api().list_repo_tree(REPO, repo_type="dataset", recursive=True)}
    assert "assets/old-plot.png" not in at_two  # the commit is the directory, nothing more

    loads = {
        f"{c}@{rev}": (c, rev)
        for c in ("mixture", "traces")
        for rev in ("v1.0.0", "v1.1.0", "main")
    }
    rows = load_in_fresh_process(hub, tmp_path / "home", loads)
    for config in ("mixture", "traces"):
        assert rows[f"{config}@v1.0.0"] == local_rows(first, config)
        assert rows[f"{config}@v1.1.0"] == local_rows(second, config)
        assert rows[f"{config}@main"] == local_rows(second, config)
        assert rows[f"{config}@v1.0.0"] != rows[f"{config}@v1.1.0"]

    newest = card_at("main")
    versions = newest.split(VERSIONS_START)[1].split(VERSIONS_END)[0]
    assert [line.split("|")[1].strip() for line in versions.strip().splitlines()[2:]] == [
        "`v1.1.0`",
        "`v1.0.0`",
    ]
    assert "2026-11-21" in versions and "2026-11-20" in versions
    assert "configs:" in newest and "data/traces/*.parquet" in newest
    assert "`v1.1.0`" not in card_at("v1.0.0")  # the old tag keeps its own card


def test_repush_of_identical_version_changes_nothing(hub: HubServer, tmp_path: Path) -> None:
    version_dir = make_version(tmp_path, "1.0.0")
    first = push_version(version_dir, token=ALICE)
    commits = len(hub.calls("commit"))
    again = push_version(version_dir, token=ALICE)
    assert again.status == "unchanged" and again.commit == first.commit
    assert len(hub.calls("commit")) == commits and len(hub.calls("create_tag")) == 1
    assert refs() == ({"main": first.commit}, {"v1.0.0": first.commit})


def test_different_content_under_an_existing_tag_is_refused(hub: HubServer, tmp_path: Path) -> None:
    version_dir = make_version(tmp_path, "1.0.0")
    first = push_version(version_dir, token=ALICE)
    table = pa.table(
        {"question_id": ["changed"], "text": ["x"], "num_tokens": pa.array([1], pa.int32())}
    )
    pq.write_table(table, version_dir / "data" / "traces" / "train-00000-of-00001.parquet")
    with pytest.raises(
        PublishError, match=r"tag v1\.0\.0 already exists .* Bump `version`"
    ) as refused:
        push_version(version_dir, token=ALICE)
    assert refs() == ({"main": first.commit}, {"v1.0.0": first.commit})

    runner = CliRunner()
    outcome = runner.invoke(push_main, [str(version_dir), "--token", ALICE])
    assert outcome.exit_code == 2
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {str(refused.value)}"]
    assert refs()[1] == {"v1.0.0": first.commit}


def test_private_repo_needs_the_token_to_read(hub: HubServer, tmp_path: Path) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    version_dir = make_version(tmp_path, "1.0.0")
    outcome = CliRunner().invoke(push_main, [str(version_dir), "--private", "--token", ALICE])
    assert outcome.exit_code == 0, outcome.stderr
    with pytest.raises(RepositoryNotFoundError):
        api(False).dataset_info(REPO)
    with pytest.raises(RepositoryNotFoundError):
        api(BOB).dataset_info(REPO)
    assert api().dataset_info(REPO).private is True
    rows = load_in_fresh_process(hub, tmp_path / "home", {"p": ("prefixes", "v1.0.0")}, token=ALICE)
    assert rows["p"] == local_rows(version_dir, "prefixes")


def test_recipe_publish_section_gives_repo_and_privacy(hub: HubServer, tmp_path: Path) -> None:
    version_dir = make_version(tmp_path, "2.0.0", repo_id="upft-org/from-recipe", private=True)
    result = push_version(version_dir, token=ALICE)
    assert result.repo_id == "upft-org/from-recipe"
    assert api().dataset_info("upft-org/from-recipe").private is True
    nowhere = make_version(tmp_path / "b", "1.0.0", repo_id=None)
    with pytest.raises(PublishError, match="pass --repo-id ORG/NAME or set publish.repo_id"):
        push_version(nowhere, token=ALICE)
    with pytest.raises(PublishError, match="--repo-id: 'no-slash' is not a Hub repo id: it needs"):
        push_version(nowhere, "no-slash", token=ALICE)


def test_missing_or_rejected_token_and_foreign_namespace(hub: HubServer, tmp_path: Path) -> None:
    version_dir = make_version(tmp_path, "1.0.0")
    with pytest.raises(PublishError, match="no Hugging Face token found: set HF_TOKEN"):
        push_version(version_dir)
    bogus = "hf_definitely_not_valid_0042"
    with pytest.raises(PublishError, match="rejected the token \\(HTTP 401\\)") as rejected:
        push_version(version_dir, token=bogus)
    assert bogus not in str(rejected.value)
    with pytest.raises(PublishError, match="may not write to alice/demo-upft \\(HTTP 403\\)"):
        push_version(version_dir, token=BOB)
    assert hub.store.get("dataset", REPO) is None and hub.calls("commit") == []


def test_token_from_the_login_cache(hub: HubServer, tmp_path: Path) -> None:
    from huggingface_hub import login, logout

    version_dir = make_version(tmp_path, "1.0.0")
    missing = CliRunner().invoke(push_main, [str(version_dir)])
    assert missing.exit_code == 2
    assert "error: no Hugging Face token found: set HF_TOKEN, run `hf auth login`" in missing.stderr
    login(token=ALICE)  # what `hf auth login` does: checks whoami, writes the token file
    try:
        outcome = CliRunner().invoke(push_main, [str(version_dir), "--quiet"])
    finally:
        logout()
    assert outcome.exit_code == 0, outcome.stderr
    assert refs()[1] == {"v1.0.0": outcome.stdout.splitlines()[0].removeprefix("commit: ")}


def test_incomplete_or_missing_version_directory(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="does not exist or is not a directory"):
        push_version(tmp_path / "nope", token=ALICE)
    version_dir = make_version(tmp_path, "1.0.0")
    (version_dir / "data" / "traces" / "train-00000-of-00001.parquet").unlink()
    (version_dir / "recipe.yaml").unlink()
    with pytest.raises(PublishError) as partial:
        push_version(version_dir, token=ALICE)
    assert "missing recipe.yaml, data/traces/*.parquet" in str(partial.value)
    assert "partial copy" in str(partial.value)
    assert hub.requests == []  # refused before talking to the Hub


def test_transient_failures_are_retried(hub: HubServer, tmp_path: Path) -> None:
    hub.fail_next("commit", status=500)
    hub.fail_next("lfs_upload", drop=True)
    result = push_version(make_version(tmp_path, "1.0.0"), token=ALICE)
    assert result.status == "pushed"
    assert [r.status for r in hub.calls("commit")] == [500, 200]
    assert None in [r.status for r in hub.calls("lfs_upload")]
    assert refs() == ({"main": result.commit}, {"v1.0.0": result.commit})


def test_lost_replies_do_not_commit_or_tag_twice(hub: HubServer, tmp_path: Path) -> None:
    version_dir = make_version(tmp_path, "1.0.0")
    hub.fail_next("commit", drop=True, after=True)  # commit lands, the reply never arrives
    hub.fail_next("create_tag", drop=True, after=True)  # same for the tag
    result = push_version(version_dir, token=ALICE)
    assert [r.status for r in hub.calls("commit")] == [None]
    assert [r.status for r in hub.calls("create_tag")] == [None, 409]
    assert len(api().list_repo_commits(REPO, repo_type="dataset")) == 2  # initial + ours
    assert refs() == ({"main": result.commit}, {"v1.0.0": result.commit})


def test_persistent_failure_tags_nothing_and_rerun_resumes(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RETRY_ATTEMPTS_ENV, "3")
    version_dir = make_version(tmp_path, "1.0.0")
    hub.fail_next("commit", status=503, times=10)
    with pytest.raises(PublishError, match="re-running push-to-hub is safe") as failed:
        push_version(version_dir, token=ALICE)
    assert "503" in str(failed.value) and "Nothing was tagged" in str(failed.value)
    assert [r.status for r in hub.calls("commit")] == [503, 503, 503]
    assert refs()[1] == {}
    hub.clear_faults()

    # The commit lands but tagging keeps failing: the re-run only tags that commit.
    hub.fail_next("create_tag", status=502, times=3)
    with pytest.raises(PublishError, match="creating tag v1.0.0"):
        push_version(version_dir, token=ALICE)
    head, tags = refs()
    assert tags == {} and len(hub.calls("commit")) == 4
    result = push_version(version_dir, token=ALICE)
    assert result.status == "pushed" and result.commit == head["main"]
    assert len(hub.calls("commit")) == 4  # no second commit
    assert refs() == (head, {"v1.0.0": head["main"]})


def test_dry_run_lists_files_and_writes_nothing(hub: HubServer, tmp_path: Path) -> None:
    version_dir = make_version(tmp_path, "1.0.0")
    outcome = CliRunner().invoke(push_main, [str(version_dir), "--dry-run", "--token", ALICE])
    assert outcome.exit_code == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    assert (
        lines[0] == f"dry run: nothing was written to the Hub; target {REPO} (branch main), "
        "tag v1.0.0"
    )
    assert lines[1] == f"{REPO} does not exist (or is not visible): it would be created"
    size = (version_dir / "manifest.json").stat().st_size
    assert f"  {size:>12,}  manifest.json" in lines
    assert any(line.endswith("  data/traces/train-00000-of-00001.parquet") for line in lines)
    assert lines[-2].startswith("8 files, ")
    assert lines[-1] == f"{hub.url}/datasets/{REPO}/tree/v1.0.0"
    writes = [r for r in hub.requests if r.method != "GET"]
    assert writes == [] and hub.store.get("dataset", REPO) is None


def test_cli_prints_commit_and_url_and_never_the_token(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as constants

    version_dir = make_version(tmp_path, "1.0.0")
    runner = CliRunner()
    pushed = runner.invoke(push_main, [str(version_dir), "--token", ALICE, "-m", "via cli"])
    assert pushed.exit_code == 0, pushed.stderr
    commit = refs()[1]["v1.0.0"]
    assert pushed.stdout.splitlines() == [
        f"published 8 files to {REPO} as v1.0.0",
        f"commit: {commit}",
        f"{hub.url}/datasets/{REPO}/tree/v1.0.0",
    ]

    monkeypatch.setenv("HF_TOKEN", ALICE)  # the usual place, no --token
    again = runner.invoke(push_main, [str(version_dir), "--quiet"])
    assert again.exit_code == 0
    assert again.stdout.splitlines() == [
        f"commit: {commit}",
        f"{hub.url}/datasets/{REPO}/tree/v1.0.0",
    ]

    bogus = "hf_leaky_token_never_print_me"
    refused = runner.invoke(push_main, [str(version_dir), "--token", bogus])
    assert refused.exit_code == 2
    assert (
        "\nerror: failed while checking the token for alice/demo-upft: the Hub rejected "
        "the token (HTTP 401)" in "\n" + refused.stderr
    )
    missing = runner.invoke(push_main, [str(tmp_path / "missing")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr

    for outcome in (pushed, again, refused, missing):
        assert ALICE not in outcome.output + outcome.stderr
        assert bogus not in outcome.output + outcome.stderr
    for folder in (Path(constants.HF_HOME), tmp_path):
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert ALICE.encode() not in data and bogus.encode() not in data, path


@pytest.mark.slow
def test_real_build_round_trips_through_the_hub(
    hub: HubServer, demo_build: Path, tmp_path: Path
) -> None:
    """What upft-build wrote is what load_dataset gets back, config by config."""
    from huggingface_hub import DatasetCard

    outcome = CliRunner().invoke(
        push_main, [str(demo_build), "--repo-id", REPO, "--token", ALICE, "--quiet"]
    )
    assert outcome.exit_code == 0, outcome.stderr
    version = json.loads((demo_build / "manifest.json").read_text())["version"]
    assert outcome.stdout.splitlines()[-1] == f"{hub.url}/datasets/{REPO}/tree/v{version}"
    rows = load_in_fresh_process(hub, tmp_path / "home", {c: (c, f"v{version}") for c in CONFIGS})
    for config in CONFIGS:
        expected = pa.concat_tables(
            pq.read_table(path) for path in sorted((demo_build / "data" / config).glob("*.parquet"))
        ).to_pylist()
        assert rows[config] == expected and expected
    card = DatasetCard(card_at(f"v{version}"))
    assert [c["config_name"] for c in card.data.to_dict()["configs"]] == list(CONFIGS)
    assert f"`v{version}`" in card.text.split(VERSIONS_START)[1].split(VERSIONS_END)[0]


# --- a slow Hub and rate limits -----------------------------------------------------------------


def test_slow_server_beyond_the_client_timeout_is_retried(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from builder.hub import load_version_dir, remote_matches
    from builder.hubclient import TIMEOUT_ENV

    monkeypatch.setenv(TIMEOUT_ENV, "1")
    version_dir = make_version(tmp_path, "1.0.0")
    hub.fail_next("commit", delay=2.5)  # answers after the client's 1 s timeout
    result = push_version(version_dir, token=ALICE)
    assert result.status == "pushed"
    hub.wait_for_calls("commit", 2)  # the slow first commit, given up on, still ends
    calls = hub.calls("commit")
    assert len(calls) == 2 and calls[1].time - calls[0].time < 2.5  # retried, not waited out
    # The late first commit could not land on top of ours (parent moved): one commit, tagged.
    assert len(api().list_repo_commits(REPO, repo_type="dataset")) == 2
    head, tags = refs()
    assert tags == {"v1.0.0": head["main"]}
    assert remote_matches(api(), REPO, tags["v1.0.0"], load_version_dir(version_dir))


def test_slow_server_every_time_fails_clearly_and_rerun_completes(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from builder.hub import load_version_dir, remote_matches
    from builder.hubclient import TIMEOUT_ENV

    monkeypatch.setenv(TIMEOUT_ENV, "1")
    monkeypatch.setenv(RETRY_ATTEMPTS_ENV, "2")
    version_dir = make_version(tmp_path, "1.0.0")
    hub.fail_next("create_tag", delay=2.0, times=2)
    with pytest.raises(PublishError) as failed:
        push_version(version_dir, token=ALICE)
    message = str(failed.value)
    assert message.startswith("failed while creating tag v1.0.0 on commit ")
    assert "the Hub kept failing (ReadTimeout: " in message
    assert "re-running push-to-hub is safe" in message
    hub.wait_for_calls("create_tag", 2)  # both slow tag requests, given up on, still end
    # The slow server carried out the first tag request late: the tag is on the commit that
    # holds exactly the version directory, never on anything partial.
    head, tags = refs()
    assert set(tags) <= {"v1.0.0"}
    for commit in tags.values():
        assert commit == head["main"]
        assert remote_matches(api(), REPO, commit, load_version_dir(version_dir))
    result = push_version(version_dir, token=ALICE)  # the re-run completes
    assert result.status in {"pushed", "unchanged"}
    assert refs() == (head, {"v1.0.0": head["main"]})
    assert len(hub.calls("commit")) == 1


def test_429_retry_after_is_honoured(hub: HubServer, tmp_path: Path) -> None:
    version_dir = make_version(tmp_path, "1.0.0")
    hub.fail_next("commit", status=429, retry_after=1)  # our own backoff is 0.01 s in tests
    hub.fail_next("create_tag", status=429, retry_after=1)
    result = push_version(version_dir, token=ALICE)
    assert result.status == "pushed"
    for endpoint in ("commit", "create_tag"):
        first, second = hub.calls(endpoint)
        assert (first.status, second.status) == (429, 200)
        assert second.time - first.time >= 1.0, endpoint  # waited as the Hub asked
    assert refs() == ({"main": result.commit}, {"v1.0.0": result.commit})


def test_429_asking_too_long_or_forever_stops_and_rerun_completes(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from builder.hubclient import MAX_RETRY_AFTER_ENV

    monkeypatch.setenv(MAX_RETRY_AFTER_ENV, "5")
    monkeypatch.setenv(RETRY_ATTEMPTS_ENV, "3")
    version_dir = make_version(tmp_path, "1.0.0")
    hub.fail_next("commit", status=429, retry_after=3600)
    with pytest.raises(PublishError) as waited:
        push_version(version_dir, token=ALICE)
    assert str(waited.value) == (
        f"the Hub asked to wait 3600 s before committing to {REPO} (HTTP 429, Retry-After); "
        "nothing was tagged. Re-run push-to-hub after that time"
    )
    assert [r.status for r in hub.calls("commit")] == [429]  # no pointless waiting
    hub.fail_next("commit", status=429, times=3)  # no Retry-After, and it never lets up
    with pytest.raises(
        PublishError,
        match=r"the Hub kept rate-limiting this token \(HTTP 429\)"
        r"\. Nothing was tagged; wait a few minutes",
    ):
        push_version(version_dir, token=ALICE)
    assert refs()[1] == {}
    result = push_version(version_dir, token=ALICE)
    assert refs() == ({"main": result.commit}, {"v1.0.0": result.commit})
