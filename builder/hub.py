"""Publish a version directory written by ``upft-build`` to the Hugging Face Hub.

Last step of the pipeline (``push-to-hub``): the directory ``<dir>/<name>/<version>/`` is
already laid out like a Hub dataset repo, so publishing is one commit of the whole directory
(parquet and png through LFS) followed by the tag ``v<version>`` on exactly that commit.
Before uploading, the card's Versions section is refreshed with the versions already tagged
on the Hub; nothing else in the README changes, so its ``configs:`` block survives.

This module checks what it is given (the version directory, the repo id, branch, message
and token, dry runs included) and decides what to do; ``builder.hubremote`` carries it out
(resumable LFS upload, then one commit, then the tag). Re-running is always safe: a tag
that already holds identical content is reported as published, a tag with different
content is refused (tags never move), a commit that landed without its tag is detected on
the branch head and only tagged, and files an interrupted push uploaded are not sent again.
Transient Hub errors are retried and failures explained by ``builder.hubclient``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from builder.errors import ManifestError, PublishError
from builder.hubclient import (
    REF_RULE,
    REPO_ID_RULE,
    configure_timeout,
    explained,
    first_line,
    is_ref_name,
    repo_id_problem,
    with_retries,
)
from builder.hubremote import (
    commit_files,
    ensure_repo,
    mask_versions,
    published_versions,
    remote_matches,
    tag_commit,
    upload_files,
)
from builder.manifest import ManifestHeader
from builder.writer import CONFIGS as DATA_CONFIGS
from builder.writer import REQUIRED_FILES

if TYPE_CHECKING:
    from builder.recipe import PublishConfig

logger = logging.getLogger(__name__)

_REBUILD = "rebuild the version with upft-build (or copy the whole directory again)"


@dataclass(frozen=True)
class LocalFile:
    """One file of the version directory, with the hashes the Hub reports for it."""

    path: str  # relative, POSIX separators: the path in the repo
    size: int
    sha256: str
    git_oid: str  # git blob id, what the Hub reports for a regular (non-LFS) file


@dataclass(frozen=True)
class VersionDir:
    root: Path
    manifest: ManifestHeader  # identity only: versions of any builder release can be published
    publish: PublishConfig  # the recipe's ``publish`` section
    readme: str
    files: tuple[LocalFile, ...]

    @property
    def version(self) -> str:
        return str(self.manifest.version)


@dataclass(frozen=True)
class Target:
    """Where and how a version is published; every field checked by :func:`resolve_target`."""

    repo_id: str
    branch: str
    tag: str
    private: bool
    title: str  # the commit message's first line
    description: str  # the rest of it ("" when none)


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    tag: str
    commit: str | None  # None only for a dry run against a repo without that tag
    url: str  # the tagged revision's page on the Hub
    status: Literal["pushed", "unchanged", "dry-run"]
    files: tuple[LocalFile, ...]
    detail: str = ""  # one line about the remote state, for the CLI


# --- the version directory ---------------------------------------------------------------------


def _hash_file(path: Path) -> tuple[str, str]:
    size = path.stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
            sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest()


def _check_complete(root: Path) -> None:
    if not root.is_dir():
        raise PublishError(
            f"version directory {str(root)!r} does not exist or is not a directory; pass the "
            "folder upft-build wrote, e.g. out/<name>/<version>"
        )
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    missing += [
        f"data/{config}/*.parquet"
        for config in DATA_CONFIGS
        if not any((root / "data" / config).glob("*.parquet"))
    ]
    if not missing:
        return
    versions = sorted(p.parent for p in root.glob("*/manifest.json"))
    if versions and not (root / "manifest.json").is_file():
        names = ", ".join(p.name for p in versions)
        raise PublishError(
            f"{root} is the folder above the versions ({names}), not a version directory; "
            f"pass one of them, e.g. {versions[-1]}"
        )
    raise PublishError(
        f"{root} is not a complete version directory: missing {', '.join(missing)}. "
        "upft-build writes all of these at once, so this looks like a partial copy; "
        f"{_REBUILD} before publishing"
    )


def _check_parquet(root: Path) -> None:
    """Every data file has a readable parquet footer, and a config's files one schema."""
    import pyarrow.parquet as pq

    for config in DATA_CONFIGS:
        first: tuple[Path, Any] | None = None
        for path in sorted((root / "data" / config).glob("*.parquet")):
            try:
                schema = pq.read_schema(path)
            except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
                raise PublishError(
                    f"{path} is not a readable parquet file ({first_line(exc)}); the version "
                    f"directory is damaged: {_REBUILD} before publishing"
                ) from None
            if first is None:
                first = (path, schema)
            elif not schema.equals(first[1]):
                raise PublishError(
                    f"{path} has columns {schema.names} but {first[0].name} has "
                    f"{first[1].names}: the files of data/{config}/ come from different builds; "
                    f"{_REBUILD}"
                )


def _check_card(root: Path, readme: str) -> None:
    where = f"{root}/README.md"
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme, re.DOTALL)
    try:
        meta = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError as exc:
        raise PublishError(
            f"{where}: its metadata block is not valid YAML ({first_line(exc)}); regenerate "
            "the card with upft-build"
        ) from None
    if not isinstance(meta, dict) or not meta.get("configs"):
        raise PublishError(
            f"{where} has no metadata block with configs: (without it the Hub cannot load "
            "the mixture, prefixes and traces configs); regenerate the card with upft-build"
        )
    if mask_versions(readme) is None:
        raise PublishError(
            f"{where} has no Versions section (the upft:versions start and end markers, "
            "once each, in that order); regenerate the card with upft-build"
        )


def _publish_section(root: Path) -> PublishConfig:
    """The recipe's ``publish`` section, checked like upft-build checks it."""
    from pydantic import ValidationError

    from builder.manifest_schema import field_errors
    from builder.recipe import PublishConfig

    where = f"{root}/recipe.yaml"
    try:
        recipe = yaml.safe_load((root / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PublishError(f"cannot read {where}: {first_line(exc)}; {_REBUILD}") from None
    publish = recipe.get("publish") if isinstance(recipe, dict) else None
    try:
        return PublishConfig.model_validate(publish or {})
    except ValidationError as exc:
        raise PublishError(
            f"{where}: publish.{field_errors(exc)}; fix the publish section there (upft-build "
            "writes it valid: was the file edited?)"
        ) from None


def load_version_dir(version_dir: str | Path) -> VersionDir:
    """Check that ``version_dir`` is a complete, undamaged build and read what publishing
    needs; every problem is a PublishError naming the file and the fix."""
    root = Path(version_dir)
    _check_complete(root)
    try:
        manifest = ManifestHeader.read(root / "manifest.json")
    except ManifestError as exc:
        raise PublishError(str(exc)) from None
    for key in ("version", "fingerprint", "created_at"):
        if not getattr(manifest, key):
            raise PublishError(
                f"{root}/manifest.json has no {key!r}; it must be the manifest upft-build wrote"
            )
    publish = _publish_section(root)
    try:
        readme = (root / "README.md").read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PublishError(
            f"{root}/README.md is not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "regenerate the card with upft-build"
        ) from None
    _check_card(root, readme)
    _check_parquet(root)
    files = []  # hashed last: the only step that reads every byte
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        # Hidden files (editor backups, .DS_Store, locks) are never part of a build.
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            try:
                sha256, git_oid = _hash_file(path)
            except OSError as exc:
                raise PublishError(
                    f"cannot read {path} ({exc.strerror or exc}); check its permissions"
                ) from None
            files.append(LocalFile(rel.as_posix(), path.stat().st_size, sha256, git_oid))
    return VersionDir(
        root=root, manifest=manifest, readme=readme, files=tuple(files), publish=publish
    )


# --- what the user asked for -------------------------------------------------------------------


def _repo_id(local: VersionDir, given: str | None) -> str:
    """The target repo id: ``--repo-id``, else the recipe's, else the manifest's; checked."""
    elsewhere = "; fix it there or pass --repo-id"
    candidates = (
        (given, "--repo-id", ""),
        (local.publish.repo_id, f"publish.repo_id in {local.root}/recipe.yaml", elsewhere),
        (local.manifest.repo_id, f"repo_id in {local.root}/manifest.json", elsewhere),
    )
    for value, origin, fix in candidates:
        if value is None or (not value and origin != "--repo-id"):
            continue
        problem = repo_id_problem(value)
        if problem:
            raise PublishError(
                f"{origin}: {value!r} is not a Hub repo id: {problem}{fix}. {REPO_ID_RULE}"
            )
        return value
    raise PublishError(
        f"no target repository for {local.root}: pass --repo-id ORG/NAME or set "
        "publish.repo_id in the recipe"
    )


def resolve_target(
    local: VersionDir,
    repo_id: str | None,
    *,
    private: bool,
    revision: str,
    message: str | None,
) -> Target:
    """Check the repo id (flag, else recipe, else manifest), branch, tag and message."""
    repo = _repo_id(local, repo_id)
    if not is_ref_name(revision):
        raise PublishError(
            f"--revision {revision!r} is not a branch name the Hub accepts; {REF_RULE}"
        )
    tag = f"v{local.version}"
    if not is_ref_name(tag):
        raise PublishError(
            f"{local.root}/manifest.json has version {local.version!r}, which cannot name a "
            f"Hub tag ({tag!r}); set a version like 1.0.0 in the recipe and rebuild"
        )
    if message is not None and not message.strip():
        raise PublishError("--message is empty; give a commit message or leave the flag out")
    text = message or (
        f"Publish {local.manifest.name or local.root.parent.name} "
        f"{local.version} (fingerprint {str(local.manifest.fingerprint)[:12]})"
    )
    title, _, description = text.strip().partition("\n")
    return Target(
        repo_id=repo,
        branch=revision,
        tag=tag,
        private=private or local.publish.private,
        title=title.strip(),
        description=description.strip(),
    )


def resolve_token(token: str | None) -> str | None:
    """The token to use (``--token``, else HF_TOKEN or the login cache), checked; None: none."""
    from huggingface_hub import get_token

    origin = "--token"
    if token is not None and not token:
        raise PublishError(
            "--token is empty; pass a Hugging Face token, or leave the flag out to use "
            "HF_TOKEN or the `hf auth login` cache"
        )
    if token is None:
        token, origin = get_token(), "HF_TOKEN (or the `hf auth login` cache)"
    if token is not None and any(c.isspace() or not c.isprintable() for c in token):
        raise PublishError(
            f"the token from {origin} contains white space or control characters (pasted "
            "with a line break?); set it again without them"
        )
    return token


# --- publishing --------------------------------------------------------------------------------


def push_version(
    version_dir: str | Path,
    repo_id: str | None = None,
    *,
    private: bool = False,
    revision: str = "main",
    message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
) -> PushResult:
    """Publish ``version_dir`` as one commit on ``revision`` tagged ``v<version>``.

    ``repo_id`` defaults to the recipe's ``publish.repo_id``; ``private`` (or the recipe's
    ``publish.private``) applies when the repo is created. ``token`` defaults to what
    huggingface_hub finds (HF_TOKEN, then the ``hf auth login`` cache). Raises
    PublishError for anything the user must fix, dry runs included; the token never
    appears in its message.
    """
    from huggingface_hub import HfApi

    local = load_version_dir(version_dir)
    target = resolve_target(local, repo_id, private=private, revision=revision, message=message)
    token = resolve_token(token)
    configure_timeout()
    api = HfApi(token=token)
    url = f"{api.endpoint}/datasets/{target.repo_id}/tree/{target.tag}"

    def outcome(
        status: Literal["pushed", "unchanged", "dry-run"], commit: str | None, detail: str = ""
    ) -> PushResult:
        return PushResult(target.repo_id, target.tag, commit, url, status, local.files, detail)

    if dry_run:
        return outcome("dry-run", None, _dry_run_detail(api, target, local, token))
    if not token:
        raise PublishError(
            "no Hugging Face token found: set HF_TOKEN, run `hf auth login`, or pass --token"
        )
    tags, branches = _read_remote(api, target, token)
    if target.tag in tags:
        return outcome("unchanged", _check_published(api, target, local, tags[target.tag], token))
    with explained("uploading the version directory", target.repo_id, token):
        commit = _upload_and_commit(api, target, local, tags, branches)
    with explained(f"creating tag {target.tag} on commit {commit}", target.repo_id, token):
        tag_commit(api, target.repo_id, target.tag, commit, target.title)
    logger.info("published %s %s at commit %s", target.repo_id, target.tag, commit)
    return outcome("pushed", commit)


def _read_remote(api: Any, target: Target, token: str) -> tuple[dict[str, str], dict[str, str]]:
    """Check the token, create the repo if needed, and read its tags and branches."""
    repo_id = target.repo_id
    with explained("checking the token", repo_id, token):
        with_retries("checking the token", api.whoami)
    with explained("creating the dataset repository", repo_id, token):
        ensure_repo(api, repo_id, target.private)
    with explained("reading tags and branches", repo_id, token):
        refs = with_retries(
            "listing refs", lambda: api.list_repo_refs(repo_id, repo_type="dataset")
        )
    tags = {t.name: t.target_commit for t in refs.tags}
    return tags, {b.name: b.target_commit for b in refs.branches}


def _check_published(api: Any, target: Target, local: VersionDir, commit: str, token: str) -> str:
    """The tag exists: fine when it holds exactly this version, refused otherwise."""
    with explained(f"comparing {target.tag} with {local.root}", target.repo_id, token):
        same = with_retries(
            f"comparing {target.tag} with {local.root}",
            lambda: remote_matches(api, target.repo_id, commit, local),
        )
    if not same:
        raise PublishError(
            f"tag {target.tag} already exists on {target.repo_id} with different content; tags "
            f"are never moved. Bump `version` in the recipe (e.g. past {local.version}), rebuild "
            "with upft-build and publish the new version"
        )
    logger.info("%s %s is already published with identical content", target.repo_id, target.tag)
    return commit


def _upload_and_commit(
    api: Any, target: Target, local: VersionDir, tags: dict[str, str], branches: dict[str, str]
) -> str:
    """The commit that holds the version on the target branch: the branch head when a
    previous run committed it but stopped before tagging, else a new one."""
    from builder.card import VersionEntry, replace_versions

    repo_id, branch = target.repo_id, target.branch
    if branch not in branches:
        logger.info("creating branch %s of %s from main", branch, repo_id)
        with_retries(
            "creating the branch",
            lambda: api.create_branch(repo_id, branch=branch, repo_type="dataset", exist_ok=True),
        )
        refs = with_retries(
            "listing refs", lambda: api.list_repo_refs(repo_id, repo_type="dataset")
        )
        branches = {b.name: b.target_commit for b in refs.branches}
    head = branches[branch]
    if with_retries(
        f"comparing {branch} with {local.root}", lambda: remote_matches(api, repo_id, head, local)
    ):
        logger.info("%s already holds this version (a previous run stopped before tagging)", branch)
        return head
    new = VersionEntry(
        tag=target.tag,
        version=local.version,
        date=str(local.manifest.created_at)[:10],
        fingerprint=str(local.manifest.fingerprint),
    )
    try:
        readme = replace_versions(local.readme, [*published_versions(api, repo_id, tags), new])
    except ValueError as exc:
        raise PublishError(f"{local.root}/README.md: {exc}") from exc
    additions = upload_files(api, repo_id, local, readme, branch)
    return commit_files(
        api,
        repo_id,
        local,
        additions,
        branch=branch,
        head=head,
        title=target.title,
        description=target.description,
    )


def _dry_run_detail(api: Any, target: Target, local: VersionDir, token: str | None) -> str:
    """What a real push would find on the Hub (reads only; failures become a note)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    repo_id, tag = target.repo_id, target.tag
    try:
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        return f"{repo_id} does not exist (or is not visible): it would be created"
    except Exception as exc:
        note = f"could not read {repo_id} ({first_line(exc)})"
        return note.replace(token, "***") if token else note
    tags = {t.name: t.target_commit for t in refs.tags}
    if tag not in tags:
        return f"{repo_id} exists; {tag} would be created"
    if remote_matches(api, repo_id, tags[tag], local):
        return f"{tag} is already published with identical content; nothing would change"
    return f"{tag} exists with different content: the push would be refused"
