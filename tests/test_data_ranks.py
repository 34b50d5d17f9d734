"""The per-rank data mode (`--data-mode per-rank`, `dmae_hf.training.streams.build_stream` and
`dmae_hf.training.data_setup.RankBatches`) on real CIFAR-10 images: every rank reads a disjoint part of the stream and
decodes only that part, for any shard count, and two CPU processes stop at the same step on uneven parts (this file
doubles as the torchrun script for that test)."""

import json
import os
import subprocess
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from dmae_hf.training import streams  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def write_shards(root, rows, sizes, features):
    import datasets

    (root / "data").mkdir(parents=True)
    start = 0
    for k, size in enumerate(sizes):
        part = datasets.Dataset.from_list(rows[start:start + size], features=features)
        part.cast_column("img", datasets.Image()).to_parquet(
            str(root / "data" / f"train-{k:05d}-of-{len(sizes):05d}.parquet"))
        start += size
    return root


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory, data_dir):
    """100 real CIFAR-10 train images in the Hub layout, as 5 uneven shards (the example split for 2 ranks) and as 4
    very uneven shards (the shard split for 2 ranks: 70 examples on rank 0, 30 on rank 1)."""
    import datasets

    src = datasets.load_dataset(str(data_dir / "cifar10"), split="train", streaming=True)
    features = datasets.Features({"img": datasets.Image(decode=False), "label": src.features["label"]})
    rows = list(src.cast_column("img", datasets.Image(decode=False)).take(100))
    root = tmp_path_factory.mktemp("ranks")
    return {"five": write_shards(root / "five", rows, (23, 20, 20, 20, 17), features),
            "four": write_shards(root / "four", rows, (40, 10, 30, 20), features)}


def rank_ids(raw, rank, world_size, workers, epoch=0):
    stream = streams.build_stream(raw, streams.ImageDecoder(), shuffle=True, seed=3, buffer_size=16, rank=rank,
                               world_size=world_size)
    stream.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(stream, batch_size=8, num_workers=workers, collate_fn=streams.collate)
    return [int(i) for batch in loader for i in batch["example_id"]]


@pytest.mark.parametrize("shards,world_size,how,workers", [("five", 2, "examples", 2), ("four", 2, "shards", 0),
                                                           ("four", 3, "examples", 0)])
def test_ranks_read_disjoint_parts_covering_the_epoch(shard_dirs, shards, world_size, how, workers):
    """Any shard count and world size: the ranks' parts (each read by its own DataLoader workers) are disjoint and
    together are the whole epoch; the split is by whole shards only when the world size divides the count."""
    raw = streams.load_image_stream(str(shard_dirs[shards]), "train", label_column=None)
    assert streams.rank_split(raw.num_shards, world_size) == how
    everything = sorted(streams.example_id(ex["image"]) for ex in raw)
    parts = [rank_ids(raw, rank, world_size, workers) for rank in range(world_size)]
    union = [i for part in parts for i in part]
    assert len(union) == len(set(union)) and sorted(union) == everything, [len(p) for p in parts]
    if how == "shards":  # rank r reads shards r, r + 2: 40 + 30 and 10 + 20 examples
        assert [len(p) for p in parts] == [70, 30]
    else:  # the example split is balanced to one example per reader (each worker, or the main process)
        assert max(map(len, parts)) - min(map(len, parts)) <= max(workers, 1)
    assert rank_ids(raw, 0, world_size, workers, epoch=1) != parts[0]  # set_epoch reshuffles the part


def test_a_rank_decodes_only_its_own_examples(shard_dirs):
    """The split comes before decoding: rank 0 of 2 decodes its half, not every example (as
    `split_dataset_by_node`'s example split would, since it applies after the map)."""
    decoded = []

    class Counting(streams.ImageDecoder):
        def __call__(self, example):
            decoded.append(streams.example_id(example["image"]))
            return super().__call__(example)

    raw = streams.load_image_stream(str(shard_dirs["five"]), "train", label_column=None)
    stream = streams.build_stream(raw, Counting(), shuffle=False, rank=0, world_size=2)
    kept = [ex["example_id"] for ex in stream]
    assert len(kept) == 50 and sorted(decoded) == sorted(kept)


def test_unknown_data_mode_is_refused(shard_dirs):
    from dmae_hf.training.arguments import DataArguments
    from dmae_hf.training.data_setup import DataSetup

    args = DataArguments(dataset=str(shard_dirs["five"]), data_mode="rank0")
    with pytest.raises(ValueError, match=r"--data-mode must be per-rank or dispatch, got 'rank0'"):
        DataSetup(args, 32, with_labels=False, seed=0)


def test_two_processes_stop_at_the_same_step_on_uneven_parts(tmp_path, shard_dirs):
    """torchrun, 2 CPU processes x 2 workers, per-rank mode, batch 8, 2 epochs. Five shards (example split, 50 per
    rank): 6 full batches each, 4 examples dropped; four shards (shard split, 70 vs 30 examples): both ranks stop
    after rank 1's 3 full batches. Every rank's examples are its own, none twice in an epoch."""
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=REPO_ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.abspath(__file__), str(tmp_path), str(shard_dirs["five"]), str(shard_dirs["four"])]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr[-4000:]
    for name, batches in (("five", 6), ("four", 3)):
        raw = streams.load_image_stream(str(shard_dirs[name]), "train", label_column=None)
        everything = {streams.example_id(ex["image"]) for ex in raw}
        ranks = [json.loads((tmp_path / f"{name}-rank{r}.json").read_text()) for r in range(2)]
        for epoch in ("0", "1"):
            parts = [r[epoch] for r in ranks]
            assert [len(p) for p in parts] == [8 * batches] * 2  # equal step counts: no DDP hang
            union = parts[0] + parts[1]
            assert len(set(union)) == len(union) and set(union) <= everything


def _main():  # torchrun entry point of the test above: each rank's example ids per epoch, per dataset
    from accelerate import Accelerator

    from dmae_hf.training.arguments import DataArguments
    from dmae_hf.training.data_setup import DataSetup, set_epoch

    out, *datasets_ = sys.argv[1:]
    accelerator = Accelerator(cpu=True)
    for path in datasets_:
        args = DataArguments(dataset=path, label_column=None, shuffle_buffer=16, num_workers=2)
        setup = DataSetup(args, 32, with_labels=False, seed=0, rank=accelerator.process_index,
                          num_processes=accelerator.num_processes)
        loader = setup.train_loader(accelerator, 8, args.num_workers)
        ids = {}
        for epoch in range(2):
            set_epoch(loader, setup.train, epoch)
            ids[epoch] = [int(i) for batch in loader for i in batch["example_id"]]
        name = os.path.basename(path)
        with open(os.path.join(out, f"{name}-rank{accelerator.process_index}.json"), "w") as f:
            json.dump(ids, f)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    _main()
