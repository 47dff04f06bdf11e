"""Persistence of sampling results, shard by shard, so interrupted builds resume.

A build works in a staging folder next to its final version directory
(``<dir>/<name>/.<version>.partial/``, :func:`staging_dir`). Each shard of questions that a
sampling phase finishes is written at once as ``shards/<phase>-<index>.arrow`` (an Arrow IPC
file, lz4-compressed: the build reads every shard back at least once, and this format costs
far less to write and read than parquet) with a ``.sha256`` sidecar (temp files, then
renames, data file last, so a killed process never leaves a shard that looks complete). A
sampled shard is a :class:`~builder.batch.SampleBatch`; a derived shard (the prefix choices)
is any Arrow table. On the next run a shard whose checksum matches is read instead of sampled;
a truncated or garbage shard is discarded with a warning naming it and sampled again. The
staging folder carries the build's fingerprint; a different fingerprint means a different
build, and its shards are discarded.

One build of a version runs at a time: :class:`BuildLock` holds an exclusive ``flock`` on
``<dir>/<name>/.<version>.lock`` (:func:`lock_path`; it records the holder's pid) while the
staging folder is in use. A second build fails with exit code 2 naming the first one's pid; a
lock left by a killed run is released by the kernel and simply taken over.

Disk errors (full disk, read-only or unwritable folder) become :class:`OutputError` naming the
path; shards already written are left intact.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from builder.batch import SampleBatch
from builder.errors import OutputError
from builder.hashing import sha256_file
from builder.sampling.base import Sample

logger = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".sha256"
# Lock files this process holds: builds in one process run one after another, so a lock still
# held here (an earlier build of the same version raised) belongs to no one else.
_HELD: dict[str, int] = {}


SHARD_SUFFIX = ".arrow"


def staging_dir(out_dir: str | Path, name: str, version: str) -> Path:
    """Where the build of ``<out_dir>/<name>/<version>`` keeps its shards until it is done."""
    return Path(out_dir) / name / f".{version}.partial"


def lock_path(staging: Path) -> Path:
    """The lock of the build that works in ``staging`` (``<dir>/<name>/.<version>.lock``)."""
    return staging.with_name(staging.name.removesuffix(".partial") + ".lock")


def disk_error(path: Path, exc: BaseException, keep: Path | None = None) -> OutputError:
    """A user-facing error for a failed write under ``path`` (full disk, permissions, ...)."""
    reason = getattr(exc, "strerror", None)
    code = getattr(exc, "errno", None)
    # polars and pyarrow wrap the OS error in their own text: "(os error 28)", "[errno 28]".
    found = re.search(r"(?:os error|errno) (\d+)", str(exc))
    if found:
        code = int(found.group(1))
        reason = os.strerror(code)
    elif not reason:
        reason = str(exc).strip().splitlines()[-1]
    hint = "free some space or choose another output.dir (--out)"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "make it writable or choose another output.dir (--out)"
    kept = f"; shards sampled so far are kept in {keep}" if keep is not None else ""
    return OutputError(f"cannot write {path}: {reason}; {hint}, then re-run to resume{kept}")


def check_output_location(out_dir: str | Path, name: str, version: str) -> None:
    """Fail early if the version directory could never be written (nothing is created)."""
    out = Path(out_dir)
    final = out / name / version
    for path in (final, final.parent, out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise OutputError(
                    f"output path {path} is a file, not a directory; set output.dir (or --out) "
                    "to a folder"
                )
            if path != final and not os.access(path, os.W_OK | os.X_OK):
                raise OutputError(
                    f"output folder {path} is not writable; make it writable or choose another "
                    "output.dir (--out)"
                )
            if path != final:
                return


class BuildLock:
    """An exclusive lock on building one version, released when the holder exits or dies.

    ``command`` and ``task`` name the holder in the refusal (``upft-eval`` locks its output
    folder the same way).
    """

    def __init__(
        self, path: Path, command: str = "upft-build", task: str = "building this version"
    ) -> None:
        self.path = path
        self.command, self.task = command, task
        self.fd: int | None = None

    def acquire(self) -> BuildLock:
        key = str(self.path.resolve())
        if key in _HELD:
            self.fd = _HELD[key]
            logger.debug("reusing this process's lock %s", self.path)
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(self.path.parent, exc) from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise disk_error(self.path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise OutputError(self._busy_message(holder)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we locked it: lock the new one
        previous = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if previous and previous != str(os.getpid()):
            logger.warning(
                "taking over the lock of an earlier build that is no longer running "
                "(pid %s, lock %s)",
                previous,
                self.path,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        _HELD[key] = fd
        return self

    def _busy_message(self, holder: str) -> str:
        what = f"pid {holder}" if holder.isdigit() else "another process"
        note = ""
        if holder.isdigit() and not _alive(int(holder)):
            note = " (that pid has exited, but a process it started still holds the lock)"
        return (
            f"another {self.command} ({what}) is {self.task} right now{note}: lock "
            f"{self.path}. Wait for it to finish or stop it, then re-run"
        )

    def release(self) -> None:
        if self.fd is None:
            return
        key = str(self.path.resolve())
        if _HELD.get(key) == self.fd:
            del _HELD[key]
            # Unlink while still holding it; a waiting build then locks a fresh file (the
            # inode check in acquire() makes sure nobody keeps a lock on the removed one).
            try:
                self.path.unlink()
            except OSError:
                pass
            os.close(self.fd)
        self.fd = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ShardStore:
    """Reads and writes the per-shard sampling results of one build (holding its lock).

    ``upft-eval`` keeps its scored shards here too (``command``/``task`` name it in a lock
    refusal).
    """

    def __init__(
        self,
        staging: Path,
        fingerprint: str,
        fresh: bool = False,
        command: str = "upft-build",
        task: str = "building this version",
    ) -> None:
        self.staging = staging
        self.shards = staging / "shards"
        self._verified: set[Path] = set()
        self.discarded: list[str] = []
        self.lock = BuildLock(lock_path(staging), command, task)
        self.lock.acquire()
        try:
            self._open(fingerprint, fresh)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, fingerprint: str, fresh: bool) -> None:
        marker = self.staging / "fingerprint"
        if self.staging.exists():
            old = marker.read_text().strip() if marker.is_file() else None
            if fresh or old != fingerprint:
                reason = "--force" if fresh else "its recipe, source or model changed"
                logger.info("discarding partial build in %s (%s)", self.staging, reason)
                shutil.rmtree(self.staging)
        try:
            self.shards.mkdir(parents=True, exist_ok=True)
            marker.write_text(fingerprint + "\n")
        except OSError as exc:
            raise disk_error(self.staging, exc) from None
        for stale in self.shards.glob("*.tmp"):  # left by a run killed mid-write
            stale.unlink(missing_ok=True)

    def _path(self, phase: str, index: int) -> Path:
        return self.shards / f"{phase}-{index:05d}{SHARD_SUFFIX}"

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + CHECKSUM_SUFFIX)

    def has(self, phase: str, index: int) -> bool:
        """Whether the shard is persisted and intact (a damaged one is discarded here)."""
        path = self._path(phase, index)
        if path in self._verified:
            return True
        if not path.is_file():
            return False
        sidecar = self._sidecar(path)
        problem = None
        if not sidecar.is_file():
            problem = "no checksum file"
        else:
            expected = sidecar.read_text(encoding="ascii", errors="replace").split()
            if not expected or expected[0] != sha256_file(path):
                problem = "checksum mismatch: truncated or overwritten"
        if problem is None:
            self._verified.add(path)
            return True
        logger.warning("discarding damaged shard %s (%s); it will be sampled again", path, problem)
        self.discarded.append(path.name)
        path.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        return False

    def save(
        self,
        phase: str,
        index: int,
        ids: Sequence[str],
        results: SampleBatch | Sequence[Sequence[Sample]],
    ) -> SampleBatch:
        """Persist one sampled shard (per question, its samples in order); returns it as a
        batch."""
        batch = SampleBatch.of(ids, results)
        self.save_frame(phase, index, batch.table)
        return batch

    def save_frame(self, phase: str, index: int, frame: Any) -> None:
        """Persist an Arrow table (or a polars frame) as shard ``<phase>-<index>``
        (checksummed, atomic)."""
        import pyarrow as pa

        table = frame.to_arrow() if hasattr(frame, "to_arrow") else frame
        target = self._path(phase, index)
        tmp = target.with_name(target.name + ".tmp")
        tmp_sum = target.with_name(target.name + CHECKSUM_SUFFIX + ".tmp")
        try:
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            with pa.OSFile(str(tmp), "wb") as sink:
                with pa.ipc.new_file(sink, table.schema, options=options) as writer:
                    writer.write_table(table)
            with tmp.open("rb+") as fh:
                os.fsync(fh.fileno())
            tmp_sum.write_text(f"{sha256_file(tmp)}  {target.name}\n", encoding="ascii")
            # The checksum lands first: a data file without one is never trusted.
            os.replace(tmp_sum, self._sidecar(target))
            os.replace(tmp, target)
        except Exception as exc:  # OSError, or pyarrow's error wrapping one
            tmp.unlink(missing_ok=True)
            tmp_sum.unlink(missing_ok=True)
            raise disk_error(target, exc, keep=self.shards) from None
        self._verified.add(target)

    def discard(self, phase: str, index: int) -> None:
        """Forget shard ``<phase>-<index>`` (its inputs changed: it must be made again)."""
        path = self._path(phase, index)
        self._verified.discard(path)
        path.unlink(missing_ok=True)
        self._sidecar(path).unlink(missing_ok=True)

    def load_table(self, phase: str, index: int) -> Any:
        """The Arrow table of shard ``<phase>-<index>`` (which must exist)."""
        import pyarrow as pa

        with pa.OSFile(str(self._path(phase, index))) as source:
            return pa.ipc.open_file(source).read_all()

    def load_frame(self, phase: str, index: int) -> Any:
        """The polars frame of shard ``<phase>-<index>`` (which must exist)."""
        import polars as pl

        return pl.from_arrow(self.load_table(phase, index))

    def load_batch(self, phase: str, index: int) -> SampleBatch:
        """One sampled shard as a batch (questions in the order they were sampled)."""
        return SampleBatch.from_table(self.load_table(phase, index))

    def load(self, phase: str, index: int) -> dict[str, list[Sample]]:
        """One sampled shard: question id -> its samples in sample order."""
        batch = self.load_batch(phase, index)
        return dict(zip(batch.question_ids(), batch, strict=True))

    def close(self) -> None:
        """Release the build lock (the shards stay for a later resume)."""
        self.lock.release()

    def remove(self) -> None:
        """The build is complete: drop the staging folder and release the lock."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.lock.release()
