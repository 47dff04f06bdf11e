"""Publish a version directory written by ``upft-build`` to the Hugging Face Hub.

Last step of the pipeline (``push-to-hub``): the directory ``<dir>/<name>/<version>/`` is
already laid out like a Hub dataset repo, so publishing is one commit of the whole directory
(parquet and png through LFS) followed by the tag ``v<version>`` on exactly that commit.
Before uploading, the card's Versions section is refreshed with the versions already tagged
on the Hub; nothing else in the README changes, so its ``configs:`` block survives.

Re-running is always safe: a tag that already holds identical content is reported as
published, a tag with different content is refused (tags never move), and a commit that
landed without its tag is detected on the branch head and only tagged. Transient Hub errors
are retried and failures explained by ``builder.hubclient``, the Hub layer every command
shares.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from builder.errors import ManifestError, PublishError
from builder.hubclient import (
    configure_timeout,
    explained,
    first_line,
    is_transient,
    status_of,
    with_retries,
)
from builder.manifest import ManifestHeader
from builder.writer import CONFIGS as DATA_CONFIGS
from builder.writer import REQUIRED_FILES

logger = logging.getLogger(__name__)

# Files the Hub adds to a repository by itself; they are not part of a version.
_HUB_OWN_FILES = frozenset({".gitattributes"})
_MASK = "<!-- upft:versions:masked -->"


@dataclass(frozen=True)
class LocalFile:
    """One file of the version directory, with the hashes the Hub reports for it."""

    path: str  # relative, POSIX separators: the path in the repo
    size: int
    sha256: str
    git_oid: str  # git blob id, what the Hub reports for a regular (non-LFS) file


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    tag: str
    commit: str | None  # None only for a dry run against a repo without that tag
    url: str  # the tagged revision's page on the Hub
    status: Literal["pushed", "unchanged", "dry-run"]
    files: tuple[LocalFile, ...]
    detail: str = ""  # one line about the remote state, for the CLI


@dataclass(frozen=True)
class VersionDir:
    root: Path
    manifest: ManifestHeader  # identity only: versions of any builder release can be published
    publish: dict[str, Any]  # the recipe's ``publish`` section ({} when absent)
    readme: str
    files: tuple[LocalFile, ...]

    @property
    def version(self) -> str:
        return str(self.manifest.version)


# --- the version directory ---------------------------------------------------------------------


def _hash_file(path: Path) -> tuple[str, str]:
    size = path.stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
            sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest()


def load_version_dir(version_dir: str | Path) -> VersionDir:
    """Check that ``version_dir`` is a complete build and read what publishing needs."""
    root = Path(version_dir)
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
    if missing:
        raise PublishError(
            f"{root} is not a complete version directory: missing {', '.join(missing)}. "
            "upft-build writes all of these at once, so this looks like a partial copy; "
            "rebuild the version (or copy the whole directory) before publishing"
        )
    try:
        manifest = ManifestHeader.read(root / "manifest.json")
        recipe = yaml.safe_load((root / "recipe.yaml").read_text(encoding="utf-8"))
    except (ManifestError, ValueError, yaml.YAMLError) as exc:
        raise PublishError(f"cannot read {root}/manifest.json or recipe.yaml: {exc}") from exc
    for key in ("version", "fingerprint", "created_at"):
        if not getattr(manifest, key):
            raise PublishError(
                f"{root}/manifest.json has no {key!r}; it must be the manifest upft-build wrote"
            )
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        # Hidden files (editor backups, .DS_Store, locks) are never part of a build.
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            sha256, git_oid = _hash_file(path)
            files.append(LocalFile(rel.as_posix(), path.stat().st_size, sha256, git_oid))
    readme = (root / "README.md").read_text(encoding="utf-8")
    if mask_versions(readme) is None:
        raise PublishError(
            f"{root}/README.md has no Versions section (the upft:versions start and end "
            "markers, once each, in that order); regenerate the card with upft-build"
        )
    publish = recipe.get("publish") if isinstance(recipe, dict) else None
    return VersionDir(
        root=root,
        manifest=manifest,
        readme=readme,
        files=tuple(files),
        publish=publish if isinstance(publish, dict) else {},
    )


def mask_versions(readme: str) -> str | None:
    """The README with its Versions section replaced by a fixed mark (None: no section)."""
    from builder.card import VERSIONS_END, VERSIONS_START

    if readme.count(VERSIONS_START) != 1 or readme.count(VERSIONS_END) != 1:
        return None
    start, end = readme.index(VERSIONS_START), readme.index(VERSIONS_END)
    if end < start:
        return None
    return readme[:start] + _MASK + readme[end + len(VERSIONS_END) :]


# --- retries and error messages ----------------------------------------------------------------


# --- reading the Hub ---------------------------------------------------------------------------


def _remote_files(api: Any, repo_id: str, commit: str) -> dict[str, Any]:
    from huggingface_hub.hf_api import RepoFile

    return {
        item.path: item
        for item in api.list_repo_tree(
            repo_id, repo_type="dataset", revision=commit, recursive=True
        )
        if isinstance(item, RepoFile) and item.path not in _HUB_OWN_FILES
    }


def _download_text(api: Any, repo_id: str, commit: str, filename: str) -> str:
    path = api.hf_hub_download(repo_id, filename, repo_type="dataset", revision=commit)
    return Path(path).read_text(encoding="utf-8")


def remote_matches(api: Any, repo_id: str, commit: str, local: VersionDir) -> bool:
    """Whether the repo at ``commit`` holds exactly the version directory's files.

    LFS files are compared by the sha256 the Hub reports, regular files by git blob id,
    and README.md by content with the Versions section masked (it lists later versions).
    """
    remote = _remote_files(api, repo_id, commit)
    if set(remote) != {f.path for f in local.files}:
        return False
    for item in local.files:
        entry = remote[item.path]
        same = entry.lfs.sha256 == item.sha256 if entry.lfs else entry.blob_id == item.git_oid
        if item.path != "README.md" and not same:
            return False
    theirs = mask_versions(_download_text(api, repo_id, commit, "README.md"))
    return theirs is not None and theirs == mask_versions(local.readme)


def _published_versions(api: Any, repo_id: str, tags: dict[str, str]) -> list[Any]:
    """A VersionEntry for each ``v*`` tag whose commit has a readable manifest.json."""
    from builder.card import VersionEntry

    entries = []
    for tag, commit in sorted(tags.items()):
        if not tag.startswith("v"):
            continue
        try:
            # Older tags may hold manifests of older builder releases: read the identity only.
            manifest = ManifestHeader.parse(
                _download_text(api, repo_id, commit, "manifest.json"), f"manifest.json of {tag}"
            )
            if not (manifest.version and manifest.created_at and manifest.fingerprint):
                raise ManifestError("it names no version, created_at or fingerprint")
            entries.append(
                VersionEntry(
                    tag=tag,
                    version=manifest.version,
                    date=manifest.created_at[:10],
                    fingerprint=manifest.fingerprint,
                )
            )
        except Exception as exc:
            if is_transient(exc):
                raise
            logger.warning(
                "tag %s of %s has no usable manifest.json (%s); not listing it in the card",
                tag,
                repo_id,
                first_line(exc),
            )
    return entries


# --- publishing --------------------------------------------------------------------------------


def _refreshed_readme(
    api: Any, repo_id: str, tags: dict[str, str], local: VersionDir, tag: str
) -> str:
    from builder.card import VersionEntry, replace_versions

    new = VersionEntry(
        tag=tag,
        version=local.version,
        date=str(local.manifest.created_at)[:10],
        fingerprint=str(local.manifest.fingerprint),
    )
    versions = [*_published_versions(api, repo_id, tags), new]
    try:
        return replace_versions(local.readme, versions)
    except ValueError as exc:
        raise PublishError(f"{local.root}/README.md: {exc}") from exc


def _commit(
    api: Any, repo_id: str, local: VersionDir, readme: str, *, branch: str, head: str, message: str
) -> str:
    """One commit holding exactly the version directory; returns its id."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    tries = 0

    def attempt() -> str:
        nonlocal tries
        tries += 1
        if tries > 1:
            # A commit whose reply was lost may have landed: look before committing twice.
            current = api.list_repo_refs(repo_id, repo_type="dataset")
            now = {b.name: b.target_commit for b in current.branches}.get(branch)
            if now and now != head and remote_matches(api, repo_id, now, local):
                return str(now)
        stale = set(_remote_files(api, repo_id, head)) - {f.path for f in local.files}
        operations: list[Any] = [CommitOperationDelete(path) for path in sorted(stale)]
        for item in local.files:
            content: Any = (
                readme.encode("utf-8") if item.path == "README.md" else str(local.root / item.path)
            )
            operations.append(CommitOperationAdd(item.path, content))
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=message,
            repo_type="dataset",
            revision=branch,
            parent_commit=head,
        )
        return str(info.oid)

    return with_retries(f"uploading to {repo_id}", attempt)


def _tag(api: Any, repo_id: str, tag: str, commit: str, message: str) -> None:
    from huggingface_hub.utils import HfHubHTTPError

    def create() -> None:
        try:
            api.create_tag(
                repo_id, tag=tag, revision=commit, tag_message=message, repo_type="dataset"
            )
        except HfHubHTTPError as exc:
            # 409 after a retried call whose first reply was lost: our own tag is fine.
            refs = (
                api.list_repo_refs(repo_id, repo_type="dataset") if status_of(exc) == 409 else None
            )
            if refs is None or {t.name: t.target_commit for t in refs.tags}.get(tag) != commit:
                raise

    with_retries(f"creating tag {tag}", create)


def _ensure_repo(api: Any, repo_id: str, private: bool) -> None:
    """Create the dataset repo unless it exists (an existing repo keeps its visibility)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = with_retries(
            "reading the repository", lambda: api.repo_info(repo_id, repo_type="dataset")
        )
    except RepositoryNotFoundError:
        logger.info(
            "creating %s dataset repository %s", "private" if private else "public", repo_id
        )
        with_retries(
            "creating the repository",
            lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True),
        )
        return
    if private and not info.private:
        logger.warning(
            "%s already exists and is public; --private only applies when the "
            "repository is created",
            repo_id,
        )


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
    PublishError for anything the user must fix; the token never appears in its message.
    """
    from huggingface_hub import HfApi, get_token

    local = load_version_dir(version_dir)
    repo_id = repo_id or local.publish.get("repo_id") or local.manifest.repo_id
    if not repo_id:
        raise PublishError(
            f"no target repository for {local.root}: pass --repo-id ORG/NAME or set "
            "publish.repo_id in the recipe"
        )
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"repo id {repo_id!r} must look like ORG/NAME")
    private = private or bool(local.publish.get("private"))
    token = token or get_token()
    tag = f"v{local.version}"
    configure_timeout()
    api = HfApi(token=token)
    url = f"{api.endpoint}/datasets/{repo_id}/tree/{tag}"

    def outcome(
        status: Literal["pushed", "unchanged", "dry-run"], commit: str | None, detail: str = ""
    ) -> PushResult:
        return PushResult(
            repo_id=repo_id,
            tag=tag,
            commit=commit,
            url=url,
            status=status,
            files=local.files,
            detail=detail,
        )

    message = message or (
        f"Publish {local.manifest.name or local.root.parent.name} "
        f"{local.version} (fingerprint {str(local.manifest.fingerprint)[:12]})"
    )

    if dry_run:
        return outcome("dry-run", None, _dry_run_detail(api, repo_id, tag, local, token))
    if not token:
        raise PublishError(
            "no Hugging Face token found: set HF_TOKEN, run `hf auth login`, or pass --token"
        )

    with explained("checking the token", repo_id, token):
        with_retries("checking the token", api.whoami)
    with explained("creating the dataset repository", repo_id, token):
        _ensure_repo(api, repo_id, private)
    with explained("reading tags and branches", repo_id, token):
        refs = with_retries(
            "listing refs", lambda: api.list_repo_refs(repo_id, repo_type="dataset")
        )
        tags = {t.name: t.target_commit for t in refs.tags}
        branches = {b.name: b.target_commit for b in refs.branches}
        if tag in tags:
            if with_retries(
                f"comparing {tag} with {local.root}",
                lambda: remote_matches(api, repo_id, tags[tag], local),
            ):
                logger.info("%s %s is already published with identical content", repo_id, tag)
                return outcome("unchanged", tags[tag])
            raise PublishError(
                f"tag {tag} already exists on {repo_id} with different content; tags are never "
                f"moved. Bump `version` in the recipe (e.g. past {local.version}), rebuild "
                "with upft-build and publish the new version"
            )
        if revision not in branches:
            logger.info("creating branch %s of %s from main", revision, repo_id)
            with_retries(
                "creating the branch",
                lambda: api.create_branch(
                    repo_id, branch=revision, repo_type="dataset", exist_ok=True
                ),
            )
            branches[revision] = branches["main"]
        head = branches[revision]
    with explained("uploading the version directory", repo_id, token):
        if with_retries(
            f"comparing {revision} with {local.root}",
            lambda: remote_matches(api, repo_id, head, local),
        ):
            logger.info(
                "%s already holds this version (a previous run stopped before tagging); tagging it",
                revision,
            )
            commit = head
        else:
            readme = _refreshed_readme(api, repo_id, tags, local, tag)
            total = sum(f.size for f in local.files)
            logger.info(
                "uploading %d files (%s bytes) to %s@%s",
                len(local.files),
                f"{total:,}",
                repo_id,
                revision,
            )
            commit = _commit(
                api, repo_id, local, readme, branch=revision, head=head, message=message
            )
    with explained(f"creating tag {tag} on commit {commit}", repo_id, token):
        _tag(api, repo_id, tag, commit, message)
    logger.info("published %s %s at commit %s", repo_id, tag, commit)
    return outcome("pushed", commit)


def _dry_run_detail(api: Any, repo_id: str, tag: str, local: VersionDir, token: str | None) -> str:
    """What a real push would find on the Hub (reads only; failures become a note)."""
    from huggingface_hub.errors import RepositoryNotFoundError

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
