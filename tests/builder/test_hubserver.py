"""The Hub-protocol test server, exercised with the real huggingface_hub and datasets clients.

These tests pin down that ``tests/hubserver`` behaves like the Hub where the publishing code
and its tests rely on it: commits with LFS, tags, refs, downloads, ``load_dataset`` with
per-config ``data_files``, and the Hub's rejections and error headers.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.hubserver import (
    ALICE,
    BOB,
    HubServer,
    client_env,
    configure_process_env,
    run_client,
)

configure_process_env()  # before anything imports huggingface_hub (see tests/hubserver)

README = textwrap.dedent("""\
    ---
    configs:
    - config_name: small
      data_files:
      - split: train
        path: data/small/*.parquet
      default: true
    - config_name: big
      data_files:
      - split: train
        path: data/big/*.parquet
    ---
    # A test dataset
    """)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A small dataset repo on disk: two parquet configs and a README with ``configs:``."""
    root = tmp_path / "repo"
    for config, values in (("small", [1, 2, 3]), ("big", list(range(10, 20)))):
        (root / "data" / config).mkdir(parents=True)
        table = pa.table({"x": values, "name": [f"{config}-{v}" for v in values]})
        pq.write_table(table, root / "data" / config / "train-00000-of-00001.parquet")
    (root / "README.md").write_text(README)
    return root


def api_for(token: str | bool | None) -> Any:
    """A real HfApi for the test Hub (HF_ENDPOINT points there), acting with ``token``."""
    from huggingface_hub import HfApi

    return HfApi(token=token)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_tag_and_download_round_trip(hub: HubServer, folder: Path, tmp_path: Path) -> None:
    api = api_for(ALICE)
    url = api.create_repo("alice/demo", repo_type="dataset")
    assert url == f"{hub.url}/datasets/alice/demo"
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id="alice/demo",
        repo_type="dataset",
        commit_message="first upload",
    )
    api.create_tag("alice/demo", tag="v1", revision=info.oid, repo_type="dataset")

    refs = api.list_repo_refs("alice/demo", repo_type="dataset")
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", info.oid)]
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [
        ("v1", "refs/tags/v1", info.oid)
    ]
    commits = api.list_repo_commits("alice/demo", repo_type="dataset")
    assert [c.title for c in commits] == ["first upload", "initial commit"]
    assert commits[0].commit_id == info.oid and commits[0].authors == ["alice"]

    # parquet went through LFS (the server chose it) and kept its exact bytes
    tree = {
        f.path: f for f in api.list_repo_tree("alice/demo", repo_type="dataset", recursive=True)
    }
    parquet = folder / "data" / "small" / "train-00000-of-00001.parquet"
    small = tree["data/small/train-00000-of-00001.parquet"]
    assert small.lfs is not None and small.lfs.sha256 == sha256(parquet)
    assert small.size == parquet.stat().st_size
    readme = tree["README.md"]
    assert readme.lfs is None
    assert (
        readme.blob_id
        == hashlib.sha1(b"blob %d\0" % len(README.encode()) + README.encode()).hexdigest()
    )
    assert sorted(tree) == [
        ".gitattributes",
        "README.md",
        "data",
        "data/big",
        "data/big/train-00000-of-00001.parquet",
        "data/small",
        "data/small/train-00000-of-00001.parquet",
    ]

    got = api.hf_hub_download(
        "alice/demo", "data/small/train-00000-of-00001.parquet", repo_type="dataset", revision="v1"
    )
    assert Path(got).read_bytes() == parquet.read_bytes()
    snapshot = Path(
        api.snapshot_download(
            "alice/demo", repo_type="dataset", revision="v1", local_dir=tmp_path / "snap"
        )
    )
    assert (snapshot / "README.md").read_text() == README
    assert sha256(snapshot / "data/big/train-00000-of-00001.parquet") == sha256(
        folder / "data/big/train-00000-of-00001.parquet"
    )

    dataset = api.dataset_info("alice/demo", files_metadata=True)
    assert dataset.sha == info.oid and dataset.private is False
    assert dataset.card_data is not None
    assert [c["config_name"] for c in dataset.card_data["configs"]] == ["small", "big"]
    lfs_siblings = {s.rfilename for s in dataset.siblings or [] if s.lfs is not None}
    assert lfs_siblings == {
        "data/small/train-00000-of-00001.parquet",
        "data/big/train-00000-of-00001.parquet",
    }


def test_load_dataset_per_config_in_fresh_process(
    hub: HubServer, folder: Path, tmp_path: Path
) -> None:
    api = api_for(ALICE)
    api.create_repo("alice/private-demo", repo_type="dataset", private=True)
    info = api.upload_folder(
        folder_path=str(folder), repo_id="alice/private-demo", repo_type="dataset"
    )
    api.create_tag("alice/private-demo", tag="v1", revision=info.oid, repo_type="dataset")
    # main moves on after the tag: loading the tag must still give the tagged rows
    api.upload_file(
        path_or_fileobj=b"not data",
        path_in_repo="notes.txt",
        repo_id="alice/private-demo",
        repo_type="dataset",
    )

    code = textwrap.dedent("""\
        import json, datasets
        out = {c: datasets.load_dataset("alice/private-demo", c, revision="v1")["train"]
               .to_list() for c in ("small", "big")}
        print(json.dumps(out))
        """)
    done = run_client(code, client_env(hub.url, tmp_path / "home", token=ALICE))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    for config in ("small", "big"):
        expected = pq.read_table(folder / "data" / config / "train-00000-of-00001.parquet")
        assert rows[config] == expected.to_pylist()

    anonymous = run_client(code, client_env(hub.url, tmp_path / "anon"))
    assert anonymous.returncode != 0
    assert "doesn't exist on the Hub or cannot be accessed" in anonymous.stderr


def test_rejections_look_like_the_hub(hub: HubServer, folder: Path) -> None:
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    alice, bob, anonymous = api_for(ALICE), api_for(BOB), api_for(False)
    alice.create_repo("alice/demo", repo_type="dataset")
    head = alice.upload_folder(
        folder_path=str(folder), repo_id="alice/demo", repo_type="dataset"
    ).oid

    with pytest.raises(HfHubHTTPError) as existing:
        alice.create_repo("alice/demo", repo_type="dataset")
    assert existing.value.response.status_code == 409
    assert alice.create_repo("alice/demo", repo_type="dataset", exist_ok=True) == (
        f"{hub.url}/datasets/alice/demo"
    )

    alice.create_tag("alice/demo", tag="v1", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as tag_again:
        alice.create_tag("alice/demo", tag="v1", revision="main", repo_type="dataset")
    assert tag_again.value.response.status_code == 409

    stale = alice.list_repo_commits("alice/demo", repo_type="dataset")[1].commit_id
    with pytest.raises(HfHubHTTPError) as moved:
        alice.create_commit(
            "alice/demo",
            [CommitOperationAdd("a.txt", b"a")],
            commit_message="late",
            repo_type="dataset",
            parent_commit=stale,
        )
    assert moved.value.response.status_code == 412
    assert alice.dataset_info("alice/demo").sha == head  # nothing was committed

    with pytest.raises(RevisionNotFoundError) as no_rev:
        alice.hf_hub_download("alice/demo", "README.md", repo_type="dataset", revision="v9")
    assert no_rev.value.response.headers["X-Error-Code"] == "RevisionNotFound"
    with pytest.raises(RepositoryNotFoundError) as no_repo:
        alice.dataset_info("alice/nothing-here")
    assert no_repo.value.response.status_code == 404
    assert no_repo.value.response.headers["X-Error-Code"] == "RepoNotFound"

    with pytest.raises(HfHubHTTPError) as foreign:
        bob.create_commit(
            "alice/demo",
            [CommitOperationAdd("b.txt", b"b")],
            commit_message="not mine",
            repo_type="dataset",
        )
    assert foreign.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as foreign_repo:
        bob.create_repo("alice/other", repo_type="dataset")
    assert foreign_repo.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as unauthenticated:
        anonymous.create_tag("alice/demo", tag="v2", repo_type="dataset")
    assert unauthenticated.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as bad_token:
        api_for("hf_not_a_token").whoami()
    assert bad_token.value.response.status_code == 401

    alice.create_repo("alice/secret", repo_type="dataset", private=True)
    with pytest.raises(RepositoryNotFoundError) as private_anon:
        anonymous.dataset_info("alice/secret")
    assert private_anon.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as private_bob:
        bob.dataset_info("alice/secret")
    assert private_bob.value.response.status_code == 404
    assert alice.dataset_info("alice/secret").private is True
    # the organization alice belongs to is writable by her, not by bob
    assert alice.create_repo("upft-org/shared", repo_type="dataset").endswith("upft-org/shared")
    assert [r.status for r in hub.calls("create_repo")][-1] == 200


def test_branches_and_tags_can_be_created_and_deleted(hub: HubServer) -> None:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

    api = api_for(ALICE)
    api.create_repo("alice/demo", repo_type="dataset")
    api.create_branch("alice/demo", branch="dev", repo_type="dataset")
    on_dev = api.create_commit(
        "alice/demo",
        [CommitOperationAdd("dev.txt", b"dev")],
        commit_message="dev work",
        repo_type="dataset",
        revision="dev",
    )
    api.create_tag("alice/demo", tag="dev-1", revision="dev", repo_type="dataset")
    refs = api.list_repo_refs("alice/demo", repo_type="dataset")
    assert {b.name: b.target_commit for b in refs.branches}["dev"] == on_dev.oid
    assert [t.target_commit for t in refs.tags] == [on_dev.oid]
    assert [f.path for f in api.list_repo_tree("alice/demo", repo_type="dataset")] == [
        ".gitattributes"
    ]  # main did not move

    api.create_commit(
        "alice/demo",
        [CommitOperationAdd("d/1.txt", b"1"), CommitOperationAdd("d/e/2.txt", b"2")],
        commit_message="folder",
        repo_type="dataset",
        revision="dev",
    )
    api.create_commit(
        "alice/demo",
        [CommitOperationDelete("d/")],
        commit_message="rm",
        repo_type="dataset",
        revision="dev",
    )
    assert [
        f.path
        for f in api.list_repo_tree(
            "alice/demo", repo_type="dataset", revision="dev", recursive=True
        )
    ] == [".gitattributes", "dev.txt"]

    api.delete_tag("alice/demo", tag="dev-1", repo_type="dataset")
    api.delete_branch("alice/demo", branch="dev", repo_type="dataset")
    refs = api.list_repo_refs("alice/demo", repo_type="dataset")
    assert [b.name for b in refs.branches] == ["main"] and refs.tags == []
    with pytest.raises(RevisionNotFoundError):
        api.delete_tag("alice/demo", tag="dev-1", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as main:
        api.delete_branch("alice/demo", branch="main", repo_type="dataset")
    assert main.value.response.status_code == 403


def test_downloads_honour_range_and_send_hub_headers(hub: HubServer, folder: Path) -> None:
    import httpx

    api = api_for(ALICE)
    api.create_repo("alice/demo", repo_type="dataset")
    head = api.upload_folder(folder_path=str(folder), repo_id="alice/demo", repo_type="dataset").oid
    parquet = (folder / "data/small/train-00000-of-00001.parquet").read_bytes()
    url = f"{hub.url}/datasets/alice/demo/resolve/main/data/small/train-00000-of-00001.parquet"

    meta = httpx.head(url)
    assert meta.status_code == 200
    assert meta.headers["X-Repo-Commit"] == head
    assert meta.headers["X-Linked-Etag"] == f'"{hashlib.sha256(parquet).hexdigest()}"'
    assert meta.headers["X-Linked-Size"] == str(len(parquet))
    assert meta.content == b""
    part = httpx.get(url, headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == parquet[4:12]
    assert part.headers["Content-Range"] == f"bytes 4-11/{len(parquet)}"
    assert httpx.get(url, headers={"Range": "bytes=-4"}).content == parquet[-4:]
    assert httpx.get(url, headers={"Range": f"bytes={len(parquet)}-"}).status_code == 416
    missing = httpx.get(f"{hub.url}/datasets/alice/demo/resolve/main/nope.txt")
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == head
    readme = httpx.get(f"{hub.url}/datasets/alice/demo/resolve/main/README.md")
    assert readme.text == README
    assert (
        readme.headers["ETag"]
        == '"'
        + hashlib.sha1(b"blob %d\0" % len(README.encode()) + README.encode()).hexdigest()
        + '"'
    )


def test_lfs_upload_is_verified(hub: HubServer) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {ALICE}"}
    api_for(ALICE).create_repo("alice/demo", repo_type="dataset")
    content = b"parquet bytes" * 100
    oid = hashlib.sha256(content).hexdigest()
    batch = httpx.post(
        f"{hub.url}/datasets/alice/demo.git/info/lfs/objects/batch",
        headers=auth,
        json={"operation": "upload", "objects": [{"oid": oid, "size": 1300}]},
    )
    assert batch.status_code == 200
    upload = batch.json()["objects"][0]["actions"]["upload"]["href"]
    assert httpx.put(upload, content=content[:-1] + b"X").status_code == 400
    assert httpx.put(upload, content=content[:-1]).status_code == 400
    assert not hub.store.has_lfs(oid)
    assert httpx.put(upload, content=content).status_code == 200
    assert hub.store.has_lfs(oid, 1300)
    again = httpx.post(
        f"{hub.url}/datasets/alice/demo.git/info/lfs/objects/batch",
        headers=auth,
        json={"operation": "upload", "objects": [{"oid": oid, "size": 1300}]},
    )
    assert "actions" not in again.json()["objects"][0]  # already stored: nothing to upload
    lines = [
        {"key": "header", "value": {"summary": "ghost"}},
        {"key": "lfsFile", "value": {"path": "x.bin", "algo": "sha256", "oid": "0" * 64}},
    ]
    ghost = httpx.post(
        f"{hub.url}/api/datasets/alice/demo/commit/main",
        headers=auth,
        content="\n".join(json.dumps(line) for line in lines),
    )
    assert ghost.status_code == 422 and "never uploaded" in ghost.json()["error"]


def test_fault_injection(hub: HubServer, folder: Path) -> None:
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    api = api_for(ALICE)
    api.create_repo("alice/demo", repo_type="dataset")
    hub.fail_next("commit", status=503)
    with pytest.raises(HfHubHTTPError) as failed:
        api.create_commit(
            "alice/demo",
            [CommitOperationAdd("a.txt", b"a")],
            commit_message="one",
            repo_type="dataset",
        )
    assert failed.value.response.status_code == 503
    assert [r.status for r in hub.calls("commit")] == [503]
    assert len(api.list_repo_commits("alice/demo", repo_type="dataset")) == 1

    # A connection lost halfway through an LFS PUT: the client's own retry completes it.
    hub.fail_next("lfs_upload", drop=True)
    api.upload_folder(folder_path=str(folder), repo_id="alice/demo", repo_type="dataset")
    statuses = [r.status for r in hub.calls("lfs_upload")]
    assert sorted(statuses, key=str) == [200, 200, None]  # two files, one PUT dropped once
    assert len(api.list_repo_commits("alice/demo", repo_type="dataset")) == 2

    # Carried out, but the reply is lost: the commit exists although the client saw an error.
    hub.fail_next("create_tag", drop=True, after=True)
    with pytest.raises(Exception):  # noqa: B017 - a transport error of whichever HTTP library
        api.create_tag("alice/demo", tag="v1", repo_type="dataset")
    assert [t.name for t in api.list_repo_refs("alice/demo", repo_type="dataset").tags] == ["v1"]
    with pytest.raises(ValueError, match="unknown endpoint"):
        hub.fail_next("comit")


def test_slow_replies_and_retry_after(hub: HubServer) -> None:
    import time

    import httpx2 as httpx

    auth = {"Authorization": f"Bearer {ALICE}"}
    hub.fail_next("whoami", delay=1.0)
    started = time.monotonic()
    slow = httpx.get(f"{hub.url}/api/whoami-v2", headers=auth, timeout=10)
    assert slow.status_code == 200 and slow.json()["name"] == "alice"
    assert time.monotonic() - started >= 1.0
    # A client with a shorter timeout gives up; the server still carries the call out.
    hub.fail_next("whoami", delay=1.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{hub.url}/api/whoami-v2", headers=auth, timeout=0.3)
    hub.fail_next("whoami", status=429, retry_after=7)
    limited = httpx.get(f"{hub.url}/api/whoami-v2", headers=auth, timeout=10)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    hub.wait_for_calls("whoami", 3)  # the abandoned request still runs to its end
    # Records are logged when a call ends; ``time`` is when it arrived.
    records = sorted(hub.calls("whoami"), key=lambda r: r.time)
    assert [r.status for r in records] == [200, 200, 429]
    assert [r.status for r in hub.calls("whoami")] == [200, 429, 200]


def test_repositories_persist_on_disk(tmp_path: Path) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi

    with HubServer(tmp_path / "hub") as first:
        api = HfApi(endpoint=first.url, token=ALICE)
        api.create_repo("alice/kept", repo_type="dataset")
        oid = api.create_commit(
            "alice/kept",
            [CommitOperationAdd("k.txt", b"kept")],
            commit_message="keep",
            repo_type="dataset",
        ).oid
    with HubServer(tmp_path / "hub") as second:
        api = HfApi(endpoint=second.url, token=ALICE)
        assert api.dataset_info("alice/kept").sha == oid
        path = api.hf_hub_download("alice/kept", "k.txt", repo_type="dataset", revision=oid)
        assert Path(path).read_bytes() == b"kept"


def test_byte_counts_and_an_outage_after_some_bytes(hub: HubServer) -> None:
    import httpx2 as httpx

    auth = {"Authorization": f"Bearer {ALICE}"}
    api_for(ALICE).create_repo("alice/demo", repo_type="dataset")
    content = bytes(range(256)) * 4
    oid = hashlib.sha256(content).hexdigest()
    body = json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": 1024}]})
    batch = httpx.post(
        f"{hub.url}/datasets/alice/demo.git/info/lfs/objects/batch", headers=auth, content=body
    )
    upload = batch.json()["objects"][0]["actions"]["upload"]["href"]
    assert hub.calls("lfs_batch")[0].received == len(body)  # request bodies are counted

    hub.go_offline_after(300)
    assert not hub.offline
    with pytest.raises(httpx.TransportError):  # reset after 300 bytes, no reply
        httpx.put(upload, content=content)
    hub.wait_offline(timeout=5)
    with pytest.raises(httpx.TransportError):  # and the network stays down for every call
        httpx.get(f"{hub.url}/api/whoami-v2", headers=auth)
    hub.wait_idle()
    put, whoami = hub.calls("lfs_upload")[-1], hub.calls("whoami")[-1]
    assert (put.status, put.received) == (None, 300)
    assert (whoami.status, whoami.received) == (None, 0)
    assert not hub.store.has_lfs(oid)
    assert hub.received("lfs_upload") == 300 and hub.received("lfs_batch") == len(body)

    hub.clear_faults()  # the network is back
    assert httpx.put(upload, content=content).status_code == 200
    assert hub.store.has_lfs(oid, 1024)
    assert hub.received("lfs_upload", since=len(hub.requests) - 1) == 1024
    with pytest.raises(ValueError, match="unknown endpoint"):
        hub.go_offline_after(10, endpoint="lfs_uplaod")
