#!/usr/bin/env python
# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Input-pipeline throughput of DMAE pre-training alone (no model): images/s of decode + resize + collate, and
rank 0's share of the decoding, in the two data modes (`--data-mode`, see dmae_hf.training.data).

The 20 real ImageNet photos of `imagenet-sample` are repeated to `--images` examples and written as a local
Hub-layout parquet folder of `--shards` shards. Each configuration reads the training stream exactly as
`examples/pretrain.py` does (`build_stream`: shuffle buffer, this rank's part, decode on `--workers` DataLoader
workers to `--decode-size`, `collate` to uint8 batches):

- baseline: 1 process (this is also `dispatch` with any number of processes: rank 0 decodes every image);
- per-rank, P processes: P processes started together, each reading and decoding its own part
  (`build_stream(rank=r, world_size=P)`); throughput = all images / the slowest process's time.

    python benchmarks/input_pipeline.py --images 2000 --processes 1 2

Ratios are against the baseline measured in the same run. On a shared machine the figures move with the load;
per-rank scales only as far as there are free cores.
"""

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_repeated(src: str, out: str, images: int, shards: int) -> None:
    import datasets

    photos = datasets.load_dataset(src, split="validation").cast_column("image", datasets.Image(decode=False))
    rows = [photos[i % len(photos)] for i in range(images)]
    os.makedirs(os.path.join(out, "data"))
    per = -(-images // shards)
    for k in range(shards):
        part = datasets.Dataset.from_list(rows[k * per:(k + 1) * per], features=photos.features)
        part.cast_column("image", datasets.Image()).to_parquet(
            os.path.join(out, "data", f"train-{k:05d}-of-{shards:05d}.parquet"))


def read_part(folder: str, rank: int, world_size: int, workers: int, decode_size: int, batch: int, start, queue):
    """One process: read and decode this rank's part; report (rank, images decoded, seconds)."""
    import torch

    torch.set_num_threads(1)
    from dmae_hf.training import data

    raw = data.load_image_stream(folder, "train", label_column=None)
    stream = data.build_stream(raw, data.ImageDecoder(decode_size, decode_size), shuffle=True, seed=0,
                               buffer_size=256, rank=rank, world_size=world_size)
    loader = torch.utils.data.DataLoader(stream, batch_size=batch, num_workers=workers, collate_fn=data.collate)
    start.wait()
    t0, count = time.perf_counter(), 0
    for b in loader:
        count += b["pixel_values"].shape[0]
    queue.put((rank, count, time.perf_counter() - t0))


def measure(folder: str, processes: int, args) -> dict:
    ctx = mp.get_context("fork")
    start, queue = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=read_part, args=(folder, r, processes, args.workers, args.decode_size, args.batch,
                                                 start, queue)) for r in range(processes)]
    for p in procs:
        p.start()
    results = sorted(queue.get() for _ in procs)
    for p in procs:
        p.join()
    total, wall = sum(r[1] for r in results), max(r[2] for r in results)
    return {"processes": processes, "images": total, "seconds": wall, "rate": total / wall,
            "rank0_share": results[0][1] / total}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("DMAE_DATA_DIR", "../shared/data"),
                        help="folder holding imagenet-sample/")
    parser.add_argument("--images", type=int, default=2000, help="examples: the 20 photos repeated")
    parser.add_argument("--shards", type=int, default=8, help="parquet shards of the repeated set")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="per-rank process counts")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers per process")
    parser.add_argument("--decode-size", type=int, default=256, help="resize shortest edge + center crop")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the collate")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "repeated")
        write_repeated(os.path.join(args.data_dir, "imagenet-sample"), folder, args.images, args.shards)
        rows = [("baseline / dispatch (rank 0 decodes all)", measure(folder, 1, args))]
        rows += [(f"per-rank, {p} processes", measure(folder, p, args)) for p in args.processes if p > 1]
    base = rows[0][1]["rate"]
    print(f"{args.images} images ({args.shards} shards), decode {args.decode_size}px, {args.workers} worker(s) per "
          f"process, {os.cpu_count()} CPUs")
    print("| mode | images/s | x baseline | rank 0 decodes |\n|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['rate']:.0f} | {r['rate'] / base:.2f} | {100 * r['rank0_share']:.0f}% |")
    for p in args.processes:
        if p > 1:
            print(f"| dispatch, {p} processes | {base:.0f} (rank 0's rate) | 1.00 | 100% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
