"""Crash safety of the shard store: checksums, the build lock and disk errors.

Fast logic tests: the builds here use the scripted sampler (tests/fakes.py) through the real
pipeline, store and writer; the real engines are killed and resumed in test_crash.py. Disk
errors are real: a small tmpfs is mounted (we run as root in CI; without root the tests that
need a mount fall back to a read-only folder or are skipped with the reason).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.errors import OutputError, SamplingError
from builder.pipeline import build
from builder.recipe import parse_recipe
from builder.sampling.base import Sample
from builder.store import BuildLock, ShardStore, check_output_location
from tests.conftest import REPO_ROOT
from tests.fakes import FakeSampler, fake_model_dir

QUESTIONS = [
    {
        "id": f"q{i}",
        "question": f"Ann has {i} pens and gets {i + 2} more. How many?",
        "answer": str(2 * i + 2),
    }
    for i in range(6)
]


def answer(text: str, j: int, seed: int) -> str:
    return f"Add the pens: sample {j}, seed {seed}. The total is {len(text) % 7}."


def make_recipe(tmp_path: Path, out: Path | None = None, **sections: Any):
    source = tmp_path / "q.jsonl"
    if not source.exists():
        source.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    data: dict[str, Any] = {
        "name": "store",
        "version": "1.0.0",
        "source": {"path": str(source), "question": "question", "answer": "answer", "id": "id"},
        "model": {"id": str(fake_model_dir(tmp_path)), "backend": "transformers"},
        "sampling": {"max_tokens": 200},  # every full trace ends: one try each
        "prefix": {"length": 8, "vote": "majority", "samples": 3},
        "mixture": {"full_trace_ratio": 0.5},
        "output": {"dir": str(out or tmp_path / "out"), "shard_size": 2},  # 3 prefix shards
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_recipe(data)


class StopAfter(FakeSampler):
    """Fails on its ``calls``-th engine call (1-based), as an engine crash would."""

    def __init__(self, calls: int) -> None:
        super().__init__(answer)
        self.stop_at = calls

    def generate(self, prompts: Any, n: int, max_tokens: int, progress: Any = None) -> Any:
        if len(self.calls) + 1 == self.stop_at:
            raise SamplingError("engine lost (test)")
        return super().generate(prompts, n, max_tokens, progress)


def manifest(result: Any) -> dict[str, Any]:
    return json.loads((result.path / "manifest.json").read_text())


def data_files(version_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(version_dir)): p.read_bytes()
        for p in sorted((version_dir / "data").rglob("*.parquet"))
    }


# --- the store on its own ---------------------------------------------------------------------


def _samples(k: int) -> list[list[Sample]]:
    return [[Sample([10 + k, 11, 12], f"text {k}", "length", -1.5)]]


def test_save_writes_a_checksum_and_load_round_trips(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / ".1.0.0.partial", "fp")
    store.save("prefix", 0, ["a"], _samples(0))
    shard = store.shards / "prefix-00000.arrow"
    sidecar = store.shards / "prefix-00000.arrow.sha256"
    import hashlib

    assert sidecar.read_text() == (
        f"{hashlib.sha256(shard.read_bytes()).hexdigest()}  prefix-00000.arrow\n"
    )
    fresh = ShardStore(tmp_path / ".1.0.0.partial", "fp")  # a re-run verifies from disk
    assert fresh.has("prefix", 0)
    assert fresh.load("prefix", 0) == {"a": _samples(0)[0]}
    assert sorted(p.name for p in store.shards.iterdir()) == [
        "prefix-00000.arrow",
        "prefix-00000.arrow.sha256",
    ]
    store.close()
    fresh.close()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no-checksum", "flipped-byte"])
def test_damaged_shard_is_discarded_with_a_warning(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    staging = tmp_path / ".1.0.0.partial"
    with contextlib.closing(ShardStore(staging, "fp")) as store:
        store.save("prefix", 0, ["a"], _samples(0))
        store.save("prefix", 1, ["b"], _samples(1))
    shard = staging / "shards" / "prefix-00001.arrow"
    raw = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        shard.write_bytes(b"\x00garbage" * 50)
    elif damage == "no-checksum":
        (staging / "shards" / "prefix-00001.arrow.sha256").unlink()
    else:
        shard.write_bytes(raw[:40] + bytes([raw[40] ^ 0xFF]) + raw[41:])
    caplog.set_level(logging.WARNING, logger="builder.store")
    with contextlib.closing(ShardStore(staging, "fp")) as store:
        assert store.has("prefix", 0)
        assert not store.has("prefix", 1)
        assert store.discarded == ["prefix-00001.arrow"]
    assert not shard.exists()
    assert not (staging / "shards" / "prefix-00001.arrow.sha256").exists()
    reason = (
        "no checksum file"
        if damage == "no-checksum"
        else "checksum mismatch: truncated or overwritten"
    )
    assert [r.getMessage() for r in caplog.records] == [
        f"discarding damaged shard {shard} ({reason}); it will be sampled again"
    ]


def test_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    staging = tmp_path / ".1.0.0.partial"
    with contextlib.closing(ShardStore(staging, "fp")) as store:
        store.save("prefix", 0, ["a"], _samples(0))
    (staging / "shards" / "prefix-00001.arrow.tmp").write_bytes(b"half a shard")
    (staging / "shards" / "prefix-00001.arrow.sha256.tmp").write_bytes(b"half")
    with contextlib.closing(ShardStore(staging, "fp")) as store:
        assert sorted(p.name for p in store.shards.iterdir()) == [
            "prefix-00000.arrow",
            "prefix-00000.arrow.sha256",
        ]


# --- damaged shards in a real build -----------------------------------------------------------


def test_a_damaged_shard_is_resampled_and_the_build_equals_an_uninterrupted_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reference = build(
        make_recipe(tmp_path, tmp_path / "ref"), quiet=True, sampler=FakeSampler(answer)
    )
    recipe = make_recipe(tmp_path)
    # Fresh full traces come first (2 shards), then phase 1: shards 0 and 1 are persisted.
    with pytest.raises(SamplingError):
        build(recipe, quiet=True, sampler=StopAfter(5))
    shards = tmp_path / "out" / "store" / ".1.0.0.partial" / "shards"
    kept = sorted(p.name for p in shards.glob("*.arrow") if not p.name.startswith("choice"))
    assert kept == [
        "full-00000.arrow",
        "full-00001.arrow",
        "prefix-00000.arrow",
        "prefix-00001.arrow",
    ]
    damaged = shards / "prefix-00001.arrow"
    damaged.write_bytes(damaged.read_bytes()[:100])  # a truncated write

    caplog.set_level(logging.WARNING, logger="builder.store")
    sampler = FakeSampler(answer)
    result = build(recipe, quiet=True, sampler=sampler)
    assert f"discarding damaged shard {damaged}" in caplog.text
    assert manifest(result)["resume"] == {
        "prefix_shards_reused": 1,
        "prefix_shards_sampled": 2,
        "full_shards_reused": 2,
        "full_shards_sampled": 0,
    }
    # Questions of the good shard were not sampled again; those of the damaged one were.
    prompts = [p for call in sampler.calls[:2] for p in call["prompts"]]
    assert not any(QUESTIONS[0]["question"] in p or QUESTIONS[1]["question"] in p for p in prompts)
    assert any(QUESTIONS[2]["question"] in p for p in prompts)
    assert data_files(result.path) == data_files(reference.path)
    assert not shards.parent.exists()


# --- the build lock ---------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from builder.store import BuildLock
BuildLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@contextlib.contextmanager
def holder(lock: Path, seconds: float = 60) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the build lock of ``lock``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_second_build_exits_2_naming_the_first_ones_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from builder.cli import build_main

    recipe = make_recipe(tmp_path)
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    lock = tmp_path / "out" / "store" / ".1.0.0.lock"
    with holder(lock) as first:
        with pytest.raises(OutputError) as info:
            build(recipe, quiet=True, sampler=FakeSampler(answer))
        assert str(info.value) == (
            f"another upft-build (pid {first.pid}) is building this version right now: lock "
            f"{lock}. Wait for it to finish or stop it, then re-run"
        )
        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke(build_main, ["r.yaml", "-q"])
        assert result.exit_code == 2, result.output
        assert f"another upft-build (pid {first.pid}) is building this version" in result.stderr
        assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "store" / ".1.0.0.partial").exists()  # untouched
    assert not (tmp_path / "out" / "store" / "1.0.0").exists()


def test_a_stale_lock_from_a_killed_build_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lock = tmp_path / "out" / "store" / ".1.0.0.lock"
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; from pathlib import Path; "
            "from builder.store import BuildLock; BuildLock(Path(sys.argv[1])).acquire(); "
            "os.kill(os.getpid(), 9)",
            str(lock),
        ],
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert killed.returncode == -9
    stale_pid = int(lock.read_text())
    caplog.set_level(logging.WARNING, logger="builder.store")
    result = build(make_recipe(tmp_path), quiet=True, sampler=FakeSampler(answer))
    assert result.status == "built"
    assert (
        f"taking over the lock of an earlier build that is no longer running (pid "
        f"{stale_pid}, lock {lock})"
    ) in caplog.text
    assert not lock.exists()  # released (and removed) when the build ended


def test_the_lock_is_released_when_a_build_fails(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path)
    with pytest.raises(SamplingError):
        build(recipe, quiet=True, sampler=StopAfter(2))
    lock = tmp_path / "out" / "store" / ".1.0.0.lock"
    assert not lock.exists()
    with holder(lock, seconds=0.1):  # another process can take it at once
        pass


# --- disk errors ------------------------------------------------------------------------------


@contextlib.contextmanager
def mounted_tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


class FillsDisk(FakeSampler):
    """Fills the output file system while answering engine call ``at`` (1-based), leaving
    ``leave`` bytes free: the next writes then run out of space."""

    def __init__(self, disk: Path, at: int, leave: int = 0) -> None:
        super().__init__(answer)
        self.disk, self.at, self.leave = disk, at, leave

    def generate(self, prompts: Any, n: int, max_tokens: int, progress: Any = None) -> Any:
        out = super().generate(prompts, n, max_tokens, progress)
        if len(self.calls) == self.at:
            free = os.statvfs(self.disk).f_bavail * os.statvfs(self.disk).f_frsize
            with contextlib.suppress(OSError), (self.disk / "filler").open("wb") as fh:
                fh.write(b"\0" * max(0, free - self.leave))
        return out


def test_disk_full_while_saving_a_shard(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with mounted_tmpfs(disk, "size=2m"):
        recipe = make_recipe(tmp_path, disk / "out")
        # The first two engine calls are the fresh full traces' two shards.
        with pytest.raises(OutputError) as info:
            build(recipe, quiet=True, sampler=FillsDisk(disk, at=2))
        shards = disk / "out" / "store" / ".1.0.0.partial" / "shards"
        assert str(info.value) == (
            f"cannot write {shards / 'full-00001.arrow'}: No space left on device; free "
            "some space or choose another output.dir (--out), then re-run to resume; shards "
            f"sampled so far are kept in {shards}"
        )
        # The shard written before the disk filled is intact; no half shard, no version dir.
        assert sorted(p.name for p in shards.iterdir()) == [
            "full-00000.arrow",
            "full-00000.arrow.sha256",
        ]
        assert not (disk / "out" / "store" / "1.0.0").exists()
        (disk / "filler").unlink()
        result = build(recipe, quiet=True, sampler=FakeSampler(answer))
        assert manifest(result)["resume"]["full_shards_reused"] == 1
        assert manifest(result)["resume"]["full_shards_sampled"] == 1


def test_disk_full_while_writing_the_version_directory(tmp_path: Path) -> None:
    reference = build(
        make_recipe(tmp_path, tmp_path / "ref"), quiet=True, sampler=FakeSampler(answer)
    )
    disk = tmp_path / "disk"
    with mounted_tmpfs(disk, "size=4m"):
        recipe = make_recipe(tmp_path, disk / "out")
        # The last engine call is phase 2's second shard: leave room for that shard only.
        with pytest.raises(OutputError) as info:
            build(recipe, quiet=True, sampler=FillsDisk(disk, at=5, leave=64 * 1024))
        root = disk / "out" / "store"
        release = root / ".1.0.0.partial" / "release"
        assert str(info.value).startswith(f"cannot write {release}: No space left on device; ")
        assert not (root / "1.0.0").exists()  # no partial version directory
        assert not release.exists()  # the half-written release was dropped
        shards = sorted(p.name for p in (root / ".1.0.0.partial" / "shards").glob("*.arrow"))
        assert shards == [
            "choice-00000.arrow",
            "choice-00001.arrow",
            "choice-00002.arrow",
            "full-00000.arrow",
            "full-00001.arrow",
            "prefix-00000.arrow",
            "prefix-00001.arrow",
            "prefix-00002.arrow",
        ]
        (disk / "filler").unlink()
        sampler = FakeSampler(answer)
        result = build(recipe, quiet=True, sampler=sampler)
        assert sampler.calls == []  # everything came from the kept shards
        assert data_files(result.path) == data_files(reference.path)


def test_unwritable_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from builder.cli import build_main

    folder = tmp_path / "ro"
    recipe = make_recipe(tmp_path, folder)
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    monkeypatch.chdir(tmp_path)
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:  # root ignores permission bits: mount a read-only file system
            stack.enter_context(mounted_tmpfs(folder, "ro,size=1m"))
        else:
            folder.mkdir()
            folder.chmod(0o555)
            stack.callback(folder.chmod, 0o755)
        with pytest.raises(OutputError) as info:
            check_output_location(folder, "store", "1.0.0")
        assert str(info.value) == (
            f"output folder {folder} is not writable; make it writable "
            "or choose another output.dir (--out)"
        )
        for args in (["r.yaml", "--dry-run"], ["r.yaml", "-q"]):
            result = CliRunner().invoke(build_main, args)
            assert result.exit_code == 2, result.output
            assert f"error: output folder {folder} is not writable" in result.stderr
            assert "Traceback" not in result.output
        # The library path (no CLI pre-check) names the path too.
        with pytest.raises(
            OutputError,
            match=rf"cannot write {folder / 'store'}: Read-only "
            r"file system|Permission denied",
        ):
            build(recipe, quiet=True, sampler=FakeSampler(answer))
        assert list(folder.iterdir()) == []


def test_lock_object_reuse_within_one_process(tmp_path: Path) -> None:
    lock = BuildLock(tmp_path / ".v.lock").acquire()
    again = BuildLock(tmp_path / ".v.lock").acquire()  # same process: an earlier build's lock
    assert again.fd == lock.fd
    again.release()
    assert not (tmp_path / ".v.lock").exists()
    lock.release()
