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


def find_data_dir() -> Path:
    """The shared real data: `$DMAE_DATA_DIR`, else `<repo>/../shared/data` (where CI lays it)."""
    candidates = [os.environ.get("DMAE_DATA_DIR"), REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "cifar10").is_dir():
            return Path(candidate)
    raise FileNotFoundError(f"No real test data (a folder holding cifar10/ and imagenet-sample/ in the Hub parquet "
                            f"layout) in {[str(c) for c in candidates if c]}; set DMAE_DATA_DIR to such a folder.")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return find_data_dir()


@pytest.fixture(scope="session")
def cifar10_test_images(data_dir):
    """The first 20 real CIFAR-10 test images (class-interleaved) as PIL images, with labels."""
    import datasets

    ds = datasets.load_dataset(str(data_dir / "cifar10"), split="test", streaming=True)
    rows = list(ds.take(20))
    return [r["img"] for r in rows], [r["label"] for r in rows]
