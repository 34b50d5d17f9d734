import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per xdist worker (and its subprocesses): on 2 cores, two workers with 2 OpenMP threads each spin
    # against each other and small matmuls get 100x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "tests" / "data"  # the committed fixture: see tests/data/README.md
FULL_CIFAR10_ENV = "DMAE_FULL_CIFAR10"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data fixture in the Hub parquet layout: `cifar10/` (200 test, 1,000 train images) and
    `imagenet-sample/` (20 photos)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def full_cifar10() -> Path:
    """The full CIFAR-10 in the Hub layout, for opt-in tests: `$DMAE_FULL_CIFAR10`, else the test is skipped."""
    path = os.environ.get(FULL_CIFAR10_ENV)
    if not path:
        pytest.skip(f"needs the full CIFAR-10: set {FULL_CIFAR10_ENV}=<a folder with data/{{split}}-*.parquet>")
    if not (Path(path) / "data").is_dir():
        pytest.fail(f"{FULL_CIFAR10_ENV}={path} holds no data/ folder of parquet shards")
    return Path(path)


@pytest.fixture(scope="session")
def cifar10_test_images(data_dir):
    """The first 20 real CIFAR-10 test images of the fixture (class-interleaved) as PIL images, with labels."""
    import datasets

    ds = datasets.load_dataset(str(data_dir / "cifar10"), split="test", streaming=True)
    rows = list(ds.take(20))
    return [r["img"] for r in rows], [r["label"] for r in rows]
