"""Training from a Hub dataset repo and pushing the model, against the Hub-protocol test server.

The real ``huggingface_hub`` / ``datasets`` clients talk to ``tests/hubserver`` through
``HF_ENDPOINT``. The end-to-end run publishes the real demo build with ``push_version`` and
trains from ``repo id + tag`` in a fresh process (the clients read ``HF_*`` at import); the
card must name the commit the tag resolved to.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.hubserver import ALICE, BOB, HubServer, client_env, configure_process_env, run_client

configure_process_env()  # before anything imports huggingface_hub (see tests/hubserver)

from builder.errors import TrainError  # noqa: E402
from upft.cli import main  # noqa: E402
from upft.output import push_folder  # noqa: E402

DATASET = "alice/demo-upft"


def small_model_folder(folder: Path) -> Path:
    """Stand-in for a trained model folder: push_folder uploads whatever the folder holds."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "README.md").write_text("---\nlibrary_name: transformers\n---\n# m\n")
    (folder / "model.safetensors").write_bytes(b"\0" * 2048)
    (folder / "trainer").mkdir()
    (folder / "trainer" / "leftover.bin").write_bytes(b"x")
    return folder


def test_push_folder_is_one_commit(hub: HubServer, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_TOKEN", ALICE)
    folder = small_model_folder(tmp_path / "model")
    result = push_folder(folder, "alice/upft-model", private=False)
    api = HfApi(token=ALICE)
    assert result["repo_id"] == "alice/upft-model"
    assert api.model_info("alice/upft-model").sha == result["commit"]
    files = set(api.list_repo_files("alice/upft-model"))
    assert {"config.json", "README.md", "model.safetensors"} <= files
    assert not [f for f in files if f.startswith("trainer/")]
    commits = api.list_repo_commits("alice/upft-model")
    assert commits[0].commit_id == result["commit"]
    assert commits[0].title == "upft-train: model"


def test_push_refusals_become_train_errors(hub: HubServer, tmp_path: Path, monkeypatch) -> None:
    folder = small_model_folder(tmp_path / "model")
    kept = f"The trained model is kept in {folder}"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(TrainError) as err:
        push_folder(folder, "alice/upft-model", private=False)
    assert str(err.value) == (
        "failed while creating the model repository for alice/upft-model: the Hub asks for a "
        "token and none was found (HTTP 401); set HF_TOKEN or run `hf auth login`. " + kept
    )
    monkeypatch.setenv("HF_TOKEN", BOB)
    with pytest.raises(TrainError) as err:
        push_folder(folder, "alice/upft-model", private=False)
    assert str(err.value) == (
        "failed while creating the model repository for alice/upft-model: this token may not "
        "write to alice/upft-model (HTTP 403). Publish to your own namespace or an organization "
        "you can write to (--push-to-hub ORG/NAME). " + kept
    )
    # The upload itself keeps failing (the repo exists): retried, then the way to finish it.
    monkeypatch.setenv("HF_TOKEN", ALICE)
    monkeypatch.setenv("UPFT_HUB_RETRY_ATTEMPTS", "2")
    hub.fail_next("commit", status=503, times=2)
    with pytest.raises(TrainError) as err:
        push_folder(folder, "alice/upft-model", private=False)
    assert str(err.value).startswith(
        f"failed while uploading {folder} for alice/upft-model: the Hub kept failing "
        "(HfHubHTTPError: "
    )
    assert str(err.value).endswith(
        f"{kept}; re-running `hf upload alice/upft-model {folder} --exclude 'trainer/**'` is "
        "safe and resumes where this run stopped"
    )
    assert [r.status for r in hub.calls("commit")] == [503, 503]
    for message in (str(err.value),):
        assert ALICE not in message and BOB not in message


def test_missing_repo_and_revision(hub: HubServer, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    out = str(tmp_path / "run")
    result = CliRunner().invoke(main, ["--dataset", "alice/nothing", "--output", out, "-q"])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"error: dataset repo 'alice/nothing' not found on {hub.url}; check the id"
    )
    HfApi(token=ALICE).create_repo(DATASET, repo_type="dataset")
    result = CliRunner().invoke(
        main, ["--dataset", DATASET, "--revision", "v9.9.9", "--output", out, "-q"]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"error: revision 'v9.9.9' not found in dataset repo '{DATASET}' on {hub.url}"
    )
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_train_from_hub_repo_and_tag(hub: HubServer, tmp_path: Path, demo_build: Path) -> None:
    from huggingface_hub import HfApi

    from builder.hub import push_version

    pushed = push_version(demo_build, DATASET, token=ALICE)
    assert pushed.tag == "v0.1.0"
    sha = HfApi(token=ALICE).dataset_info(DATASET, revision="v0.1.0").sha
    assert sha == pushed.commit
    out = tmp_path / "run"
    args = ["upft-train", "--dataset", DATASET, "--revision", "v0.1.0",
            "--model", "embedded:smollm2", "--output", str(out), "--max-steps", "1",
            "--batch-size", "2", "--micro-batch-size", "2", "--quiet"]  # fmt: skip
    code = f"import sys; sys.argv = {args!r}; from upft.cli import main; main()"
    done = run_client(code, client_env(hub.url, tmp_path / "hf-home", token=ALICE))
    assert done.returncode == 0, done.stderr[-4000:]

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["dataset"]["kind"] == "hub"
    assert summary["dataset"]["location"] == DATASET
    assert summary["dataset"]["revision"] == "v0.1.0"
    assert summary["dataset"]["commit"] == sha
    manifest = json.loads((demo_build / "manifest.json").read_text())
    assert summary["dataset"]["fingerprint"] == manifest["fingerprint"]
    assert summary["examples"]["total"] == manifest["counts"]["mixture_rows"]
    assert summary["steps"] == 1
    card = (out / "README.md").read_text()
    assert f"| Dataset | [`{DATASET}`](https://huggingface.co/datasets/{DATASET}) (Hub) |" in card
    assert "| Requested revision | `v0.1.0` |" in card
    assert f"| Resolved commit | `{sha}` |" in card
    assert f"datasets:\n- {DATASET}\n" in card


def test_unreachable_hub_is_an_error_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    args = ["upft-train", "--dataset", DATASET, "--output", str(tmp_path / "run"), "-q"]
    code = f"import sys; sys.argv = {args!r}; from upft.cli import main; main()"
    done = run_client(code, client_env(endpoint, tmp_path / "hf-home"))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    # Connection errors are retried (one warning line each), then reported in one error line.
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: cannot reach dataset repo '{DATASET}' on {endpoint}:")
    retries = [line for line in lines if line.startswith("warning: reading dataset repo")]
    assert len(retries) == 3  # UPFT_HUB_RETRY_ATTEMPTS defaults to 4 tries
    assert "Traceback" not in done.stderr
