"""The committed real-data fixture (tests/data): what it holds, that it stays small, and (opt-in, with the full set
in `$DMAE_FULL_CIFAR10`) that its CIFAR-10 rows are the full set's first rows, byte for byte."""

import subprocess

import pyarrow.parquet as pq
from conftest import DATA_DIR, REPO_ROOT

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def rows(folder, split):
    shards = sorted((DATA_DIR / folder / "data").glob(f"{split}-*.parquet"))
    return [r for shard in shards for r in pq.read_table(shard).to_pylist()]


def test_fixture_holds_the_promised_rows_in_the_hub_layout():
    import datasets

    test, train, photos = rows("cifar10", "test"), rows("cifar10", "train"), rows("imagenet-sample", "validation")
    assert (len(test), len(train), len(photos)) == (200, 1000, 20)
    assert [r["label"] for r in test] == [i % 10 for i in range(200)]  # class-interleaved prefix
    assert len({r["img"]["bytes"] for r in test + train}) == 1200 and len({r["image"]["bytes"] for r in photos}) == 20
    ds = datasets.load_dataset(str(DATA_DIR / "cifar10"), split="train", streaming=True)
    assert ds.features["label"].names == CIFAR10_NAMES and ds.num_shards == 5
    photo = next(iter(datasets.load_dataset(str(DATA_DIR / "imagenet-sample"), split="validation", streaming=True)))
    assert photo["image"].size == (512, 512) and photo["label"] == 243  # foolbox's imagenet_00_243.jpg


def test_fixture_is_small_and_tracked():
    tracked = subprocess.run(["git", "ls-files", "tests/data"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    files = [p for p in DATA_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert {str(p.relative_to(REPO_ROOT)) for p in files if p.suffix == ".parquet"} <= set(tracked)
    assert sum(p.stat().st_size for p in files) < 4_000_000


def test_fixture_is_the_first_rows_of_the_full_cifar10(full_cifar10):
    """Opt-in: `DMAE_FULL_CIFAR10=<folder with data/{split}-*.parquet>`."""
    for split, count in (("test", 200), ("train", 1000)):
        full = []
        for shard in sorted((full_cifar10 / "data").glob(f"{split}-*.parquet")):
            full += pq.read_table(shard, columns=["img", "label"]).slice(0, count - len(full)).to_pylist()
        assert full == rows("cifar10", split), split
