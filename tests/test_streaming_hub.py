"""Pre-training streamed over HTTP from the loopback Hub (tests/hub_server.py) as from huggingface.co: an
ImageNet-layout parquet repository and a webdataset tar repository, both built from the 20 real ImageNet photos of
`imagenet-sample` in 4 shards. `examples/pretrain.py --dataset <repo id>` trains from them and resumes exactly (a
run resumed from the Hub equals the uninterrupted run from a local copy of the same files); gated and missing
datasets give a clear message; and 2 nodes x 1 process (torchrun, loopback rendezvous) pre-train from the Hub in
the per-rank mode and resume exactly."""

import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile

import pytest
import torch
from conftest import REPO_ROOT
from hub_server import FakeHub
from safetensors.torch import load_file

pytestmark = pytest.mark.timeout(180)

PARQUET, WDS, GATED = "tester/imagenet-sample", "tester/imagenet-sample-wds", "tester/imagenet-gated"
TINY = ["--preset", "tiny", "--image-size", "32", "--patch-size", "8", "--decode-size", "32", "--grad-accum", "1",
        "--batch-size", "4", "--shuffle-buffer", "8", "--num-workers", "2", "--recon-every", "0", "--max-steps", "6",
        "--warmup-steps", "2", "--lr", "1e-3", "--log-every", "1", "--save-every", "3", "--train-size", "20"]


def shard_files(data_dir) -> dict[str, dict[str, bytes]]:
    """{"parquet": Hub-layout parquet shards, "wds": webdataset tars}: the 20 ImageNet photos, 5 per shard."""
    import datasets

    src = datasets.load_dataset(str(data_dir / "imagenet-sample"), split="validation")
    src = src.cast_column("image", datasets.Image(decode=False))
    parquet, wds = {}, {}
    for k in range(4):
        part = src.select(range(5 * k, 5 * k + 5))
        buf = io.BytesIO()
        part.cast_column("image", datasets.Image()).to_parquet(buf)
        parquet[f"data/train-{k:05d}-of-00004.parquet"] = buf.getvalue()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i, row in enumerate(part):
                for ext, payload in (("jpg", row["image"]["bytes"]), ("cls", str(row["label"]).encode())):
                    info = tarfile.TarInfo(f"{5 * k + i:08d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        wds[f"imagenet-train-{k:04d}.tar"] = buf.getvalue()
    return {"parquet": parquet, "wds": wds}


@pytest.fixture(scope="module")
def hub(tmp_path_factory, data_dir):
    """The loopback Hub serving the two repositories (and a gated copy), with local copies of the same files."""
    files = shard_files(data_dir)
    local = tmp_path_factory.mktemp("local")
    for kind, repo in files.items():
        for name, payload in repo.items():
            (local / kind / name).parent.mkdir(parents=True, exist_ok=True)
            (local / kind / name).write_bytes(payload)
    with FakeHub() as server:
        server.add_dataset(PARQUET, files["parquet"])
        server.add_dataset(WDS, files["wds"])
        server.add_dataset(GATED, files["parquet"], gated=True, granted={"granted-token"})
        server.local = local
        server.home = tmp_path_factory.mktemp("hf_home")
        yield server


def hub_env(hub, token: str | None = "x") -> dict:
    """A subprocess environment pointed at the loopback Hub, online, with its own cache."""
    env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HOME=str(hub.home), HF_HUB_DISABLE_XET="1",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), MPLBACKEND="Agg", ACCELERATE_USE_CPU="1")
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return env


def pretrain(args: list, env: dict, timeout: int = 150) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), *map(str, args)]
    try:
        return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        stderr = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else error.stderr or ""
        pytest.fail(f"pretrain.py did not finish in {timeout} s; its stderr ends with:\n{stderr[-3000:]}")


def assert_same_weights(a_dir, b_dir):
    a, b = load_file(a_dir / "final" / "model.safetensors"), load_file(b_dir / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (key, (a[key] - b[key]).abs().max())


@pytest.mark.parametrize("kind,repo_id", [("parquet", PARQUET), ("wds", WDS)])
def test_pretraining_streams_from_the_hub_and_resumes_exactly(kind, repo_id, hub, tmp_path):
    """6 steps from the local copy; then the same run resumed at step 3 (mid-epoch: 5 batches an epoch) with the
    Hub id: the same final weights, so the HTTP stream is the local stream, example for example."""
    env = hub_env(hub)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = pretrain(TINY + ["--dataset", hub.local / kind, "--output-dir", straight], env)
    assert result.returncode == 0, result.stderr[-4000:]
    shutil.copytree(straight / "checkpoints" / "checkpoint-3", resumed / "checkpoints" / "checkpoint-3")
    shutil.copy(straight / "metrics.jsonl", resumed / "metrics.jsonl")
    requests_before = len(hub.requests)
    result = pretrain(TINY + ["--dataset", repo_id, "--output-dir", resumed, "--resume"], env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resumed from" in result.stdout + result.stderr
    fetched = {path.rsplit("/", 1)[-1] for _, path in hub.requests[requests_before:] if "/resolve/" in path}
    assert set(hub.datasets[repo_id].files) <= {name for name in fetched} | {
        name for name in hub.datasets[repo_id].files if "/" in name and name.rsplit("/", 1)[-1] in fetched}
    assert_same_weights(straight, resumed)


@pytest.mark.parametrize("token,status", [(None, "401"), ("x", "403")])
def test_gated_dataset_names_access_request_and_token(token, status, hub, tmp_path):
    result = pretrain(TINY + ["--dataset", GATED, "--output-dir", tmp_path], hub_env(hub, token), timeout=60)
    assert result.returncode == 2, result.stderr[-3000:]
    err = result.stderr.strip().splitlines()[-1]
    assert err.startswith("error: Dataset 'tester/imagenet-gated'") and "gated" in err
    assert "request access" in err and "--token" in err and "HF_TOKEN" in err
    assert not (tmp_path / "checkpoints").exists()


def test_missing_dataset_names_the_id_and_what_to_pass(hub, tmp_path):
    result = pretrain(TINY + ["--dataset", "tester/no-such-dataset", "--output-dir", tmp_path], hub_env(hub),
                      timeout=60)
    assert result.returncode == 2, result.stderr[-3000:]
    err = result.stderr.strip().splitlines()[-1]
    assert "'tester/no-such-dataset'" in err and "doesn't exist on the Hub" in err and "Pass a Hub id" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(args: list, env: dict, timeout: int = 150) -> None:
    """Run pretrain.py as 2 nodes x 1 process: two torchrun agents with a static rendezvous on loopback."""
    port = str(free_port())
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
                               "1", "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", port,
                               str(REPO_ROOT / "examples" / "pretrain.py"), *map(str, args)],
                              cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:
        for node in nodes:
            node.kill()
        pytest.fail("the 2-node run did not finish: " + "\n".join(n.communicate()[1][-2000:] for n in nodes))
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-4000:]


@pytest.mark.timeout(300)
def test_two_nodes_pretrain_from_the_hub_and_resume(hub, tmp_path):
    """2 nodes x 1 process (per-rank mode: 2 parquet shards, 10 photos per node), 4 steps of batch 2 per rank; a
    second 2-node run resumed from the step-2 checkpoint (mid-epoch) ends with the same weights."""
    env = hub_env(hub)
    args = TINY + ["--dataset", PARQUET, "--max-steps", "4", "--save-every", "2", "--batch-size", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    two_nodes(args + ["--output-dir", straight], env)
    assert sorted(os.listdir(straight / "checkpoints")) == ["checkpoint-2", "checkpoint-4"]
    assert {"rng_0.safetensors", "rng_1.safetensors"} <= set(os.listdir(straight / "checkpoints" / "checkpoint-2"))
    shutil.copytree(straight / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    two_nodes(args + ["--output-dir", resumed, "--resume"], env)
    assert_same_weights(straight, resumed)
