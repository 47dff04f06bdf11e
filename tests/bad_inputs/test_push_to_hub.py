"""The bad-input catalogue for ``push-to-hub``: every input it takes, driven through the real
command line (click's CliRunner) against the Hub-protocol test server.

Each case sets up a version directory (written like upft-build writes one, see
tests/builder/test_hub.py) and maybe breaks it, runs ``push-to-hub`` with its arguments, and
expects exit code 2 with one ``error: ...`` line naming the file or value and the fix, no
traceback, and nothing written to the Hub: inputs that can be checked locally are refused
before any request (``local=True``), and those only the Hub can judge leave its tags as they
were. Local cases also run as ``--dry-run``: a dry run checks everything a push checks.
(The catalogue of ``upft-build`` inputs is tests/bad_inputs/test_catalogue.py.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tests.hubserver import ALICE, HubServer, configure_process_env

configure_process_env()  # before anything imports huggingface_hub (see tests/hubserver)

from builder.cli import push_main  # noqa: E402
from tests.builder.test_hub import make_version  # noqa: E402

VERSION = str(Path("v") / "demo-upft" / "1.0.0")
SECRET = "hf_pasted\nwith_a_line_break"


@dataclass(frozen=True)
class Case:
    id: str
    fragments: tuple[str, ...]  # each must appear in the error line ({tmp}: the test folder)
    args: tuple[str, ...] = (VERSION, "--token", ALICE)
    setup: Callable[[Path], None] | None = None  # breaks the version directory in tmp
    env: tuple[tuple[str, str], ...] = ()
    local: bool = True  # refused before any request to the Hub


def _version(tmp: Path) -> Path:
    return make_version(tmp / "v", "1.0.0")


def _edit(name: str, change: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        change(_version(tmp) / name)

    return setup


def _write(name: str, data: bytes | str) -> Callable[[Path], None]:
    raw = data.encode() if isinstance(data, str) else data
    return _edit(name, lambda path: path.write_bytes(raw))


def _json(name: str, **changes: object) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        data = json.loads(path.read_text())
        data.update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del data[key]
        path.write_text(json.dumps(data))

    return _edit(name, change)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _readme(old: str, new: str) -> Callable[[Path], None]:
    return _edit("README.md", lambda p: p.write_text(p.read_text().replace(old, new)))


def _other_schema(tmp: Path) -> None:
    root = _version(tmp)
    table = pa.table({"question_id": ["x"], "score": [1.0]})
    pq.write_table(table, root / "data" / "prefixes" / "train-00001-of-00002.parquet")


def _published_then_changed(tmp: Path) -> None:
    from builder.hub import push_version

    root = _version(tmp)
    push_version(root, token=ALICE)
    table = pa.table(
        {"question_id": ["changed"], "text": ["x"], "num_tokens": pa.array([1], pa.int32())}
    )
    pq.write_table(table, root / "data" / "traces" / "train-00000-of-00001.parquet")


def _no_publish_section_but_manifest_repo(repo_id: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        root = make_version(tmp / "v", "1.0.0", repo_id=None)
        manifest = json.loads((root / "manifest.json").read_text())
        (root / "manifest.json").write_text(json.dumps({**manifest, "repo_id": repo_id}))

    return setup


CASES = [
    # --- the version directory ---------------------------------------------------------------
    Case(
        "missing-directory",
        ("version directory 'nowhere' does not exist or is not a directory",),
        args=("nowhere", "--token", ALICE),
    ),
    Case(
        "incomplete-directory",
        ("is not a complete version directory: missing manifest.json", "partial copy"),
        setup=_edit("manifest.json", Path.unlink),
    ),
    Case(
        "folder-above-the-versions",
        (
            f"{Path('v') / 'demo-upft'} is the folder above the versions (1.0.0), not a version "
            f"directory; pass one of them, e.g. {VERSION}",
        ),
        args=(str(Path("v") / "demo-upft"), "--token", ALICE),
        setup=_version,
    ),
    Case(
        "truncated-parquet",
        (
            "data/traces/train-00000-of-00001.parquet is not a readable parquet file",
            "the version directory is damaged: rebuild the version with upft-build",
        ),
        setup=_edit("data/traces/train-00000-of-00001.parquet", _truncate),
    ),
    Case(
        "empty-parquet",
        ("data/mixture/train-00000-of-00001.parquet is not a readable parquet file",),
        setup=_write("data/mixture/train-00000-of-00001.parquet", b""),
    ),
    Case(
        "parquet-files-from-two-builds",
        (
            "train-00001-of-00002.parquet has columns ['question_id', 'score'] but "
            "train-00000-of-00001.parquet has ['question_id', 'text', 'num_tokens']",
            "the files of data/prefixes/ come from different builds",
        ),
        setup=_other_schema,
    ),
    Case(
        "manifest-not-json",
        ("v/demo-upft/1.0.0/manifest.json is not valid JSON (line 1, column 2",),
        setup=_write("manifest.json", "{"),
    ),
    Case(
        "manifest-without-fingerprint",
        ("manifest.json has no 'fingerprint'; it must be the manifest upft-build wrote",),
        setup=_json("manifest.json", fingerprint=None),
    ),
    Case(
        "manifest-version-not-a-tag-name",
        (
            "manifest.json has version '1.0 beta', which cannot name a Hub tag ('v1.0 beta'); "
            "set a version like 1.0.0 in the recipe and rebuild",
        ),
        setup=_json("manifest.json", version="1.0 beta"),
    ),
    Case(
        "manifest-repo-id-invalid",
        (
            "repo_id in v/demo-upft/1.0.0/manifest.json: 'me/na me' is not a Hub repo id: it "
            "contains white space; fix it there or pass --repo-id",
        ),
        setup=_no_publish_section_but_manifest_repo("me/na me"),
    ),
    Case(
        "recipe-not-yaml",
        ("cannot read v/demo-upft/1.0.0/recipe.yaml: ",),
        setup=_write("recipe.yaml", "name: [unclosed\n"),
    ),
    Case(
        "recipe-publish-repo-id-invalid",
        (
            "recipe.yaml: publish.repo_id: Value error, repo_id 'bad repo' must look like "
            "'org/name'",
            "fix the publish section there",
        ),
        setup=_json("recipe.yaml", publish={"repo_id": "bad repo"}),
    ),
    Case(
        "recipe-publish-private-not-a-boolean",
        ("recipe.yaml: publish.private: Input should be a valid boolean",),
        setup=_json("recipe.yaml", publish={"repo_id": "alice/demo-upft", "private": "sometimes"}),
    ),
    Case(
        "readme-not-utf8",
        ("README.md is not UTF-8 text (invalid start byte at byte 0)",),
        setup=_write("README.md", b"\xff\xfe---\n"),
    ),
    Case(
        "readme-front-matter-not-yaml",
        ("README.md: its metadata block is not valid YAML",),
        setup=_readme("license: apache-2.0\n", "license: [apache-2.0\n"),
    ),
    Case(
        "readme-without-configs",
        ("README.md has no metadata block with configs:",),
        setup=_readme("configs:", "not_configs:"),
    ),
    Case(
        "readme-without-versions-section",
        ("README.md has no Versions section",),
        setup=_readme("<!-- upft:versions:end -->", ""),
    ),
    # --- flags and the token -----------------------------------------------------------------
    Case(
        "repo-id-with-spaces",
        (
            "--repo-id: 'bad repo/na me' is not a Hub repo id: it contains white space. A Hub "
            "repo id is ORG/NAME:",
        ),
        args=(VERSION, "--repo-id", "bad repo/na me", "--token", ALICE),
        setup=_version,
    ),
    Case(
        "repo-id-without-slash",
        ("--repo-id: 'no-slash' is not a Hub repo id: it needs exactly one '/'",),
        args=(VERSION, "--repo-id", "no-slash", "--token", ALICE),
        setup=_version,
    ),
    Case(
        "repo-id-with-double-dash",
        ("--repo-id: 'me/a--b' is not a Hub repo id: 'a--b' contains '--' or '..'",),
        args=(VERSION, "--repo-id", "me/a--b", "--token", ALICE),
        setup=_version,
    ),
    Case(
        "revision-with-a-space",
        ("--revision 'my branch' is not a branch name the Hub accepts; use letters",),
        args=(VERSION, "--revision", "my branch", "--token", ALICE),
        setup=_version,
    ),
    Case(
        "revision-as-a-full-ref",
        ("--revision 'refs/heads/dev' is not a branch name the Hub accepts",),
        args=(VERSION, "--revision", "refs/heads/dev", "--token", ALICE),
        setup=_version,
    ),
    Case(
        "empty-message",
        ("--message is empty; give a commit message or leave the flag out",),
        args=(VERSION, "-m", "  ", "--token", ALICE),
        setup=_version,
    ),
    Case(
        "empty-token",
        ("--token is empty; pass a Hugging Face token, or leave the flag out",),
        args=(VERSION, "--token", ""),
        setup=_version,
    ),
    Case(
        "token-with-a-line-break",
        ("the token from --token contains white space or control characters",),
        args=(VERSION, "--token", SECRET),
        setup=_version,
    ),
    Case(
        "hf-token-with-a-space",
        ("the token from HF_TOKEN (or the `hf auth login` cache) contains white space",),
        args=(VERSION,),
        setup=_version,
        env=(("HF_TOKEN", "hf_two words"),),
    ),
    Case(
        "no-token",
        ("no Hugging Face token found: set HF_TOKEN, run `hf auth login`, or pass --token",),
        args=(VERSION,),
        setup=_version,
    ),
    # --- what only the Hub can judge ---------------------------------------------------------
    Case(
        "rejected-token",
        ("failed while checking the token for alice/demo-upft: the Hub rejected the token",),
        args=(VERSION, "--token", "hf_wrong"),
        setup=_version,
        local=False,
    ),
    Case(
        "foreign-namespace",
        ("this token may not write to bob/demo (HTTP 403)", "(--repo-id ORG/NAME)"),
        args=(VERSION, "--repo-id", "bob/demo", "--token", ALICE),
        setup=_version,
        local=False,
    ),
    Case(
        "other-content-under-the-tag",
        ("tag v1.0.0 already exists on alice/demo-upft with different content",),
        setup=_published_then_changed,
        local=False,
    ),
]
# A dry run checks everything a push checks (a dry run needs no token).
DRY_RUNS = [
    replace(case, id=f"{case.id}-dry-run", args=(*case.args, "--dry-run"))
    for case in CASES
    if case.local and case.id != "no-token"
]


def test_the_catalogue_covers_every_input() -> None:
    assert len({c.id for c in CASES + DRY_RUNS}) == len(CASES + DRY_RUNS) >= 50
    flags = {arg for case in CASES for arg in case.args if arg.startswith("-")}
    assert flags >= {"--repo-id", "--revision", "-m", "--token"}


@pytest.mark.parametrize("case", CASES + DRY_RUNS, ids=[c.id for c in CASES + DRY_RUNS])
def test_push_to_hub_bad_input(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: HubServer
) -> None:
    from tests.builder.test_hub import refs

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    if case.setup is not None:
        case.setup(tmp_path)
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    tags_before = refs()[1] if hub.store.get("dataset", "alice/demo-upft") else {}
    seen = len(hub.requests)

    result = CliRunner().invoke(push_main, list(case.args), prog_name="push-to-hub")

    out = result.output
    assert result.exit_code == 2, out
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out
    for fragment in case.fragments:
        assert fragment.replace("{tmp}", str(tmp_path)) in errors[0], out
    assert (
        "Traceback" not in out
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    )
    assert SECRET not in out and ALICE not in out
    if case.local:
        assert hub.requests[seen:] == []  # refused before talking to the Hub
    elif hub.store.get("dataset", "alice/demo-upft"):
        assert refs()[1] == tags_before  # nothing tagged
