"""builder/hubremote.py: the upload stage, the one commit and resuming, byte by byte.

The real huggingface_hub client publishes to the Hub-protocol test server (tests/hubserver),
which counts the request bytes it reads and can let the network fail after a given number
of uploaded bytes. What was published is loaded back with the real ``datasets`` library in
a fresh process.
"""

from __future__ import annotations

import inspect
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.hubserver import ALICE, HubServer, client_env, configure_process_env, run_client

configure_process_env()  # before anything imports huggingface_hub (see tests/hubserver)

from builder.hub import load_version_dir, push_version  # noqa: E402
from builder.hubremote import remote_matches  # noqa: E402
from tests.builder.test_hub import REPO, api, make_version, refs  # noqa: E402

# JSON calls and the commit (README inline) around the uploads: well under this.
PROTOCOL_BYTES = 64 * 1024


def lfs_files(version_dir: Path) -> dict[str, tuple[str, int]]:
    """Path -> (sha256, size) of the files the Hub stores through LFS (parquet, png)."""
    return {
        f.path: (f.sha256, f.size)
        for f in load_version_dir(version_dir).files
        if f.path.endswith((".parquet", ".png"))
    }


def big_version(base: Path, megabytes: int, files: int, seed: int = 0) -> Path:
    """A version directory whose traces config is ``files`` parquet files of random,
    incompressible bytes, ``megabytes`` MiB in all (a shard layout like a big build's)."""
    root = make_version(base, "1.0.0")
    traces = root / "data" / "traces"
    for path in traces.glob("*.parquet"):
        path.unlink()
    rng = np.random.default_rng(seed)
    width = 4096
    rows = megabytes * 2**20 // width // files
    for i in range(files):
        data = pa.py_buffer(rng.integers(0, 256, size=rows * width, dtype=np.uint8).tobytes())
        offsets = pa.py_buffer(np.arange(0, rows * width + 1, width, dtype=np.int32).tobytes())
        table = pa.table(
            {
                "question_id": [f"q{i}-{j}" for j in range(rows)],
                "num_tokens": pa.array(np.full(rows, 32, np.int32)),
                "payload": pa.Array.from_buffers(pa.binary(), rows, [None, offsets, data]),
            }
        )
        name = f"train-{i:05d}-of-{files:05d}.parquet"
        pq.write_table(table, traces / name, compression="none")
    return root


def table_digest(table):  # type: ignore[no-untyped-def]  (also runs in a bare subprocess)
    """(rows, sha256 over every value, column by column in name order) of an arrow table."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(table.column_names):
        for chunk in table.column(name).chunks:
            for value in chunk.to_pylist():
                digest.update(value if isinstance(value, bytes) else repr(value).encode())
    return table.num_rows, digest.hexdigest()


def test_files_go_up_once_and_a_retried_commit_sends_none_again(
    hub: HubServer, tmp_path: Path
) -> None:
    version_dir = make_version(tmp_path, "1.0.0")
    lfs = lfs_files(version_dir)
    hub.fail_next("commit", status=500)
    result = push_version(version_dir, token=ALICE)
    assert [r.status for r in hub.calls("commit")] == [500, 200]
    # One upload stage: the commit's retry asked nothing about files and sent none.
    assert len(hub.calls("preupload")) == 1 and len(hub.calls("lfs_batch")) == 1
    assert hub.received("lfs_upload") == sum(size for _, size in lfs.values())
    assert len(hub.calls("lfs_upload")) == len(lfs) == 5
    assert refs() == ({"main": result.commit}, {"v1.0.0": result.commit})


def test_content_the_hub_holds_is_not_sent_again(hub: HubServer, tmp_path: Path) -> None:
    """A second version sharing files with the first uploads only what changed."""
    first = make_version(tmp_path / "a", "1.0.0")
    push_version(first, token=ALICE)
    second = make_version(tmp_path / "b", "1.1.0")  # same seed: same parquet and png bytes
    (second / "assets" / "agreement.png").write_bytes(b"\x89PNG new" * 10)
    before = len(hub.requests)
    result = push_version(second, token=ALICE)
    assert result.status == "pushed"
    assert [r.received for r in hub.calls("lfs_upload")[5:]] == [80]  # the one new png
    assert hub.received("lfs_upload", since=before) == 80


@pytest.mark.slow  # ~210 MiB through the real clients twice: about 20 s here
def test_interrupted_big_upload_resumes_with_only_the_missing_files(
    hub: HubServer, tmp_path: Path
) -> None:
    started = time.monotonic()
    version_dir = big_version(tmp_path / "v", megabytes=208, files=16)
    lfs = lfs_files(version_dir)
    total = sum(size for _, size in lfs.values())
    assert total >= 200 * 2**20

    # First push, in its own process: the network fails after 75% of the bytes and stays
    # down; the process is then killed (a laptop closed, a job pre-empted).
    hub.go_offline_after(int(total * 0.75))
    args = ["push-to-hub", str(version_dir), "--token", ALICE]
    code = f"import sys; sys.argv = {args!r}; from builder.cli import push_entry; push_entry()"
    first = subprocess.Popen(
        [sys.executable, "-c", code],
        env=client_env(hub.url, tmp_path / "home-1", token=ALICE),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        hub.wait_offline(timeout=120)
        hub.wait_idle()  # the bytes in flight when the network failed are read, then reset
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    hub.wait_idle()
    hub.clear_faults()  # the network is back
    first_bytes = hub.received()
    assert first_bytes >= int(total * 0.75)
    # Nothing is visible: no commit but the repo's initial one, no tag.
    assert refs()[1] == {}
    assert len(api().list_repo_commits(REPO, repo_type="dataset")) == 1
    missing = {path: size for path, (sha, size) in lfs.items() if not hub.store.has_lfs(sha)}
    assert 0 < sum(missing.values()) < total

    mark = len(hub.requests)
    result = push_version(version_dir, token=ALICE)
    hub.wait_idle()
    second_bytes = hub.received(since=mark)
    uploaded = hub.received("lfs_upload", since=mark)
    assert uploaded == sum(missing.values())  # exactly the missing files, each once
    assert len(hub.calls("lfs_upload")[-len(missing) :]) == len(missing)
    assert second_bytes - uploaded < PROTOCOL_BYTES
    assert len(api().list_repo_commits(REPO, repo_type="dataset")) == 2  # one commit
    assert refs() == ({"main": result.commit}, {"v1.0.0": result.commit})
    assert remote_matches(api(), REPO, result.commit, load_version_dir(version_dir))
    pushed = time.monotonic() - started

    code = inspect.getsource(table_digest) + textwrap.dedent(f"""\
        import json, datasets
        print(json.dumps({{
            config: table_digest(datasets.load_dataset({REPO!r}, config, revision="v1.0.0")
                                 ["train"].with_format("arrow")[:])
            for config in ("mixture", "prefixes", "traces")
        }}))
        """)
    done = run_client(code, client_env(hub.url, tmp_path / "home-2"))
    assert done.returncode == 0, done.stderr[-4000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for config in ("mixture", "prefixes", "traces"):
        files = sorted((version_dir / "data" / config).glob("*.parquet"))
        expected = table_digest(pa.concat_tables(pq.read_table(p) for p in files))
        assert loaded[config] == list(expected), config
    print(
        f"\nresumable upload: {total:,} LFS bytes; first push read {first_bytes:,} bytes before "
        f"the network failed; second push read {second_bytes:,} bytes ({uploaded:,} of them the "
        f"{len(missing)} missing files); push {pushed:.1f} s, "
        f"load {time.monotonic() - started - pushed:.1f} s"
    )
