"""What ``push-to-hub`` reads from and writes to the Hub for one version directory.

``builder.hub`` decides what to publish; this module carries it out with the real
``huggingface_hub`` client: it compares a remote commit with the version directory, lists the
versions already tagged (for the card's Versions section), uploads the LFS objects, makes the
one commit and sets the tag. Every call is retried on transient errors by
``builder.hubclient``.

Uploads resume. The LFS objects (parquet, png) go up first with ``preupload_lfs_files``, whose
git-LFS batch request asks the Hub which objects it already holds and sends only the others:
files an interrupted push finished are not sent again, by a retry in the same run or by the
next run. Then one commit references them all; nothing is visible on the branch until that
commit, and the tag goes on exactly that commit. (huggingface_hub's large-folder upload makes
many commits, so a version would show up half-uploaded; it is not used.)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import ManifestError
from builder.hubclient import first_line, is_transient, status_of, with_retries
from builder.manifest import ManifestHeader

if TYPE_CHECKING:
    from builder.card import VersionEntry
    from builder.hub import VersionDir

logger = logging.getLogger(__name__)

# Files the Hub adds to a repository by itself; they are not part of a version.
HUB_OWN_FILES = frozenset({".gitattributes"})
_MASK = "<!-- upft:versions:masked -->"


def mask_versions(readme: str) -> str | None:
    """The README with its Versions section replaced by a fixed mark (None: no section)."""
    from builder.card import VERSIONS_END, VERSIONS_START

    if readme.count(VERSIONS_START) != 1 or readme.count(VERSIONS_END) != 1:
        return None
    start, end = readme.index(VERSIONS_START), readme.index(VERSIONS_END)
    if end < start:
        return None
    return readme[:start] + _MASK + readme[end + len(VERSIONS_END) :]


# --- reading -------------------------------------------------------------------------------------


def remote_files(api: Any, repo_id: str, commit: str) -> dict[str, Any]:
    """The files of the dataset repo at ``commit`` (path -> RepoFile), the Hub's own left out."""
    from huggingface_hub.hf_api import RepoFile

    return {
        item.path: item
        for item in api.list_repo_tree(
            repo_id, repo_type="dataset", revision=commit, recursive=True
        )
        if isinstance(item, RepoFile) and item.path not in HUB_OWN_FILES
    }


def download_text(api: Any, repo_id: str, commit: str, filename: str) -> str:
    path = api.hf_hub_download(repo_id, filename, repo_type="dataset", revision=commit)
    return Path(path).read_text(encoding="utf-8")


def remote_matches(api: Any, repo_id: str, commit: str, local: VersionDir) -> bool:
    """Whether the repo at ``commit`` holds exactly the version directory's files.

    LFS files are compared by the sha256 the Hub reports, regular files by git blob id,
    and README.md by content with the Versions section masked (it lists later versions).
    """
    remote = remote_files(api, repo_id, commit)
    if set(remote) != {f.path for f in local.files}:
        return False
    for item in local.files:
        entry = remote[item.path]
        same = entry.lfs.sha256 == item.sha256 if entry.lfs else entry.blob_id == item.git_oid
        if item.path != "README.md" and not same:
            return False
    theirs = mask_versions(download_text(api, repo_id, commit, "README.md"))
    return theirs is not None and theirs == mask_versions(local.readme)


def published_versions(api: Any, repo_id: str, tags: dict[str, str]) -> list[VersionEntry]:
    """A VersionEntry for each ``v*`` tag whose commit has a readable manifest.json."""
    from builder.card import VersionEntry

    entries = []
    for tag, commit in sorted(tags.items()):
        if not tag.startswith("v"):
            continue
        try:
            # Older tags may hold manifests of older builder releases: read the identity only.
            manifest = ManifestHeader.parse(
                download_text(api, repo_id, commit, "manifest.json"), f"manifest.json of {tag}"
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


# --- writing -------------------------------------------------------------------------------------


def ensure_repo(api: Any, repo_id: str, private: bool) -> None:
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


def upload_files(api: Any, repo_id: str, local: VersionDir, readme: str, branch: str) -> list[Any]:
    """Send the version's LFS objects to the Hub; return the commit's additions.

    The objects are stored on the Hub but belong to no commit yet, so nothing is visible.
    The Hub's LFS batch answer leaves out the objects it already holds (from an interrupted
    push, or a file shared with an earlier version): they are not sent again. The
    returned operations are marked uploaded, so the commit sends no file content again,
    however often it is retried.
    """
    from huggingface_hub import CommitOperationAdd

    additions = [
        CommitOperationAdd(
            item.path,
            readme.encode("utf-8") if item.path == "README.md" else str(local.root / item.path),
        )
        for item in local.files
    ]
    total = sum(f.size for f in local.files)
    logger.info(
        "uploading %d files (%s bytes) to %s@%s; content the Hub already holds is not sent again",
        len(local.files),
        f"{total:,}",
        repo_id,
        branch,
    )
    with_retries(
        f"uploading files to {repo_id}",
        lambda: api.preupload_lfs_files(
            repo_id, additions, repo_type="dataset", revision=branch, free_memory=False
        ),
    )
    return additions


def commit_files(
    api: Any,
    repo_id: str,
    local: VersionDir,
    additions: list[Any],
    *,
    branch: str,
    head: str,
    title: str,
    description: str,
) -> str:
    """One commit on ``branch`` (whose head must still be ``head``) holding exactly the
    version directory: ``additions`` plus deletions of files the branch has and the version
    lacks. Returns the commit id."""
    from huggingface_hub import CommitOperationDelete

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
        stale = set(remote_files(api, repo_id, head)) - {f.path for f in local.files}
        operations = [CommitOperationDelete(path) for path in sorted(stale)] + additions
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=title,
            commit_description=description or None,
            repo_type="dataset",
            revision=branch,
            parent_commit=head,
        )
        return str(info.oid)

    return with_retries(f"committing to {repo_id}", attempt)


def tag_commit(api: Any, repo_id: str, tag: str, commit: str, message: str) -> None:
    """Create ``tag`` on ``commit``; a tag of ours that a lost reply hid is accepted."""
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
