"""The data modules (`dmae_hf.training.streams` and `dmae_hf.training.data_setup.DataSetup`) on the real CIFAR-10 /
ImageNet-sample shards: decoding, clear errors on bad input, held-out validation, and "every example exactly once per
epoch" across two CPU processes x two DataLoader workers (this file doubles as the torchrun script for that test)."""

import argparse
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


def ids_of(ds) -> list[int]:
    return [streams.example_id(ex["image"]) for ex in ds]


@pytest.fixture(scope="module")
def small_hub_dir(tmp_path_factory, data_dir):
    """100 real CIFAR-10 train images in the Hub layout, as 5 uneven shards (23, 20, 20, 20, 17)."""
    import datasets

    root = tmp_path_factory.mktemp("small_cifar")
    (root / "data").mkdir()
    src = datasets.load_dataset(str(data_dir / "cifar10"), split="train", streaming=True)
    features = src.features
    rows = list(src.cast_column("img", datasets.Image(decode=False)).take(100))
    start = 0
    for k, size in enumerate((23, 20, 20, 20, 17)):
        part = datasets.Dataset.from_list(rows[start:start + size], features=datasets.Features(
            {"img": datasets.Image(decode=False), "label": features["label"]}))
        part.cast_column("img", datasets.Image()).to_parquet(str(root / "data" / f"train-{k:05d}-of-00005.parquet"))
        start += size
    return root


# ------------------------------------------------------------------------------------------------------ decoding

def test_cifar10_decodes_to_uint8_and_float_in_unit_range(data_dir):
    ds = streams.load_image_stream(str(data_dir / "cifar10"), "test")
    assert set(ds.features) == {"image", "label"}  # `img` renamed
    assert streams.num_classes_of(ds) == 10 and streams.class_names_of(ds)[3] == "cat"
    decoder = streams.ImageDecoder(num_labels=10)
    examples = [decoder(ex) for ex in ds.take(6)]
    for ex in examples:
        assert ex["pixel_values"].dtype.name == "uint8" and ex["pixel_values"].shape == (3, 32, 32)
        assert 0 <= ex["label"] < 10
    batch = streams.collate(examples)
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (6, 3, 32, 32)
    assert batch["labels"].dtype == torch.int64 and batch["labels"].shape == (6,)
    assert len(set(batch["example_id"].tolist())) == 6
    from dmae_hf.training.augment import to_float

    x = to_float(batch["pixel_values"])
    assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal((x * 255).round().to(torch.uint8), batch["pixel_values"])  # exact /255, nothing else


def test_imagenet_sample_is_resized_and_center_cropped(data_dir):
    ds = streams.load_image_stream(str(data_dir / "imagenet-sample"), "validation")
    first = next(iter(ds))
    native = streams.ImageDecoder().decode(first["image"])
    assert native.dtype.name == "uint8" and native.shape[0] == 3 and min(native.shape[1:]) > 64
    for shortest, crop in ((256, 224), (36, 32)):
        out = streams.ImageDecoder(shortest, crop)(first)
        assert out["pixel_values"].shape == (3, crop, crop)


# ------------------------------------------------------------------------------------------------------ bad input

def test_missing_dataset_path_is_a_clear_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fix = r".*Pass a Hub id such as uoft-cs/cifar10.*data/\{split\}-\*\.parquet.*save_to_disk"
    for path in (str(tmp_path / "nope"), "../no-such-data/cifar10"):  # absolute, and relative
        with pytest.raises(ValueError, match=r"Dataset '.*no.*' is neither a local dataset folder nor a reachable "
                                             r"Hub dataset id \(no such local folder\)" + fix):
            streams.load_image_stream(path, "train")
    # a name that is no local folder: asked of the Hub, which offline mode forbids
    with pytest.raises(ValueError, match=r"Dataset 'no-such-org/no-such-set' is neither .*Offline mode is on "
                                         r"\(HF_HUB_OFFLINE=1\)"):
        streams.load_image_stream("no-such-org/no-such-set", "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"Dataset folder '.*empty' holds no dataset in the Hub layout"):
        streams.load_image_stream(str(empty), "train")


def test_gated_dataset_message_names_token_and_access_request():
    message = streams.dataset_not_found("ILSVRC/imagenet-1k", "Dataset 'ILSVRC/imagenet-1k' is a gated dataset on "
                                                           "the Hub. You must be authenticated to access it.")
    assert "--token" in message and "HF_TOKEN" in message and "request access" in message


def test_save_to_disk_dataset_dict_loads(tmp_path, data_dir):
    import datasets

    src = datasets.load_dataset(str(data_dir / "cifar10"), split="test", streaming=True)
    rows = list(src.take(8))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows, features=src.features)}).save_to_disk(
        str(tmp_path / "dd"))
    ds = streams.load_image_stream(str(tmp_path / "dd"), "train")
    assert set(ds.features) == {"image", "label"} and len(list(ds)) == 8


def test_unknown_split_lists_the_available_ones(data_dir):
    with pytest.raises(ValueError, match=r"Unknown split 'validation'.*available splits: \['test', 'train'\]"):
        streams.load_image_stream(str(data_dir / "cifar10"), "validation")


def test_unknown_columns_list_the_columns(data_dir):
    with pytest.raises(ValueError, match=r"Unknown image column 'image'.*columns are \['img', 'label'\]"):
        streams.load_image_stream(str(data_dir / "cifar10"), "test", image_column="image")
    with pytest.raises(ValueError, match=r"Unknown label column 'fine_label'.*columns are \['img', 'label'\]"):
        streams.load_image_stream(str(data_dir / "cifar10"), "test", label_column="fine_label")


def test_out_of_range_labels_fail_validation(data_dir):
    ds = streams.load_image_stream(str(data_dir / "cifar10"), "test")
    with pytest.raises(ValueError, match=r"Label [5-9] is out of range: labels must be in \[0, 5\) \(num_labels=5\)"):
        streams.validate_stream(ds, streams.ImageDecoder(num_labels=5))
    assert streams.validate_stream(ds, streams.ImageDecoder(num_labels=10), num_examples=16) == 16
    with pytest.raises(ValueError, match="Label -1 is out of range"):
        streams.check_label(-1, 10)


# ------------------------------------------------------------------------------------------------------ subsets

def test_hold_out_is_disjoint_and_complete(small_hub_dir):
    raw = streams.load_image_stream(str(small_hub_dir), "train", label_column=None)
    train, val = streams.hold_out(raw, 10)
    all_ids, val_ids, train_ids = ids_of(raw), ids_of(val), ids_of(train)
    assert val_ids == all_ids[:10]
    assert not set(val_ids) & set(train_ids) and sorted(val_ids + train_ids) == sorted(all_ids)
    with pytest.raises(ValueError, match="larger than the split"):
        streams.hold_out(raw, 1000)


def test_first_examples_are_the_first_ones_even_with_workers(data_dir):
    """`--max-train-examples`: the subset is the first N examples whatever the worker sharding (a plain
    `ds.take(N)` would take N/workers from each worker's own shards: a different subset)."""
    raw = streams.load_image_stream(str(data_dir / "cifar10"), "train", label_column=None)
    expected = ids_of(raw.take(40))
    subset = streams.first_examples(raw, 40)
    loader = torch.utils.data.DataLoader(streams.build_stream(subset, streams.ImageDecoder(), shuffle=False),
                                         batch_size=8, num_workers=2, collate_fn=streams.collate)
    seen = [int(i) for batch in loader for i in batch["example_id"]]
    assert sorted(seen) == sorted(expected)


# ------------------------------------------------------------------------------------------------------ sharding

def run_epochs(out_dir, dataset: str, *extra: str) -> list[dict]:
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=REPO_ROOT)
    # --standalone: torchrun binds its own free port (no pick-then-bind race with the other xdist worker's runs)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.abspath(__file__), "--dataset", dataset,
           "--output-dir", str(out_dir), "--batch-size", "8", "--num-workers", "2", "--shuffle-buffer", "32",
           "--data-mode", "dispatch", *extra]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("case", ["uneven-shards", "max-train-examples"])
def test_every_example_once_per_epoch_across_two_processes_and_workers(case, tmp_path, small_hub_dir, data_dir):
    """2 ranks x 2 DataLoader workers (rank 0 reads, Accelerate dispatches the batches), 2 epochs: every training
    example is seen, none of the held-out ones, no example twice except Accelerate's end-of-epoch padding (like
    DistributedSampler's: the global remainder is completed with the epoch's first examples, fewer than
    num_processes of them), both ranks run the same number of batches, and the order changes between epochs."""
    if case == "uneven-shards":  # 100 examples in 5 uneven shards, 9 held out: 91 = 5 global batches of 16 + 11
        dataset, val, extra, pad = str(small_hub_dir), 9, (), 1
        raw = streams.load_image_stream(dataset, "train", label_column=None)
    else:  # the first 100 + 10 of the real 50k-example train split
        dataset, val, extra, pad = str(data_dir / "cifar10"), 10, ("--max-train-examples", "100"), 0
        raw = streams.load_image_stream(dataset, "train", label_column=None).take(110)
    all_ids = ids_of(raw)
    held, expected = set(all_ids[:val]), sorted(all_ids[val:])
    ranks = run_epochs(tmp_path, dataset, "--val-size", str(val), *extra)
    assert ranks[0]["train_size"] == len(expected)
    orders = []
    for epoch in ("0", "1"):
        per_rank = [r["ids"][epoch] for r in ranks]
        assert len(per_rank[0]) == len(per_rank[1])  # same number of steps on both ranks (no DDP hang)
        assert ranks[0]["batches"][epoch] == ranks[1]["batches"][epoch] == -(-(len(expected) + pad) // 16)
        union = per_rank[0] + per_rank[1]
        assert sorted(set(union)) == expected and not set(union) & held
        assert len(union) - len(expected) == pad
        if pad:  # the duplicates are the padding: the epoch's first examples
            first = per_rank[0][:1]
            assert sorted(union) == sorted(expected + first)
        orders.append(union)
    assert orders[0] != orders[1]  # set_epoch reshuffles


def _main():  # torchrun entry point of the test above: one rank's example ids for two epochs
    from dmae_hf.training.arguments import add_common_args, training_arguments
    from dmae_hf.training.data_setup import DataSetup, set_epoch
    from dmae_hf.training.loop import make_accelerator

    parser = argparse.ArgumentParser()
    add_common_args(parser, "pretrain")
    args = training_arguments(parser.parse_args())
    accelerator = make_accelerator(args.optim, args.run)
    setup = DataSetup(args.data, 32, with_labels=False, seed=args.optim.seed)
    loader = accelerator.prepare(setup.loader(setup.train, args.optim.batch_size, args.data.num_workers))
    ids, batches = {}, {}
    for epoch in range(2):
        set_epoch(loader, setup.train, epoch)
        ids[epoch], batches[epoch] = [], 0
        for batch in loader:
            ids[epoch] += batch["example_id"].tolist()
            batches[epoch] += 1
    with open(os.path.join(args.run.output_dir, f"rank{accelerator.process_index}.json"), "w") as f:
        json.dump({"train_size": setup.train_size, "ids": ids, "batches": batches}, f)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the process group, as the example scripts do


if __name__ == "__main__":
    _main()
