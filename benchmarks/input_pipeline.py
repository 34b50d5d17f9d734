#!/usr/bin/env python
# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Input-pipeline throughput of DMAE pre-training alone (no model): images/s of decode + resize + collate, and
rank 0's share of the decoding, in the two data modes (`--data-mode`, see dmae_hf.training.streams).

The 20 real ImageNet photos of `imagenet-sample` (the test fixture's, in `tests/data`) are repeated to `--images`
examples and written as a local Hub-layout parquet folder of `--shards` shards. Each configuration starts its
processes together as a gloo process group (forked, with torchrun's environment variables, on CPU) and builds the
training batches exactly as `examples/pretrain.py` does: `loop.make_accelerator` (`dispatch_batches=True`),
`data_setup.DataSetup` (shuffle buffer, `build_stream`, `ImageDecoder` to `--decode-size` on `--workers` DataLoader
workers, `collate` to uint8 batches) and `DataSetup.train_loader`, iterated through `rng_neutral` on every rank:

- baseline: 1 process (both modes are the same there);
- per-rank, P processes: each rank reads and decodes its own part (`RankBatches`, full batches only);
- dispatch, P processes: `accelerator.prepare(loader)`, rank 0 reads and decodes every global batch and
  Accelerate splits it over the ranks.

Throughput = images delivered to all ranks' training loops / the slowest rank's time (from a common start to its
last batch). Who decodes is counted in the decoder: every `ImageDecoder` call of the run appends one byte to its
rank's tally file, from whichever DataLoader worker runs it (the setup's validation decodes are not counted).

    python benchmarks/input_pipeline.py --images 2000 --processes 1 2

Ratios are against the baseline measured in the same run. On a shared machine the figures move with the load;
per-rank scales only as far as there are free cores.
"""

import argparse
import multiprocessing as mp
import os
import socket
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


def counting_decoder(tally: str):
    """`streams.ImageDecoder` that appends one byte to the file `tally` per decoded example (O_APPEND: safe from
    several DataLoader workers; a path, unlike a shared counter, survives the dataset being pickled or copied)."""
    from dmae_hf.training import streams

    class CountingDecoder(streams.ImageDecoder):
        def __call__(self, example: dict) -> dict:
            fd = os.open(tally, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)
            return super().__call__(example)

    return CountingDecoder


def run_rank(folder: str, mode: str, rank: int, world_size: int, port: int, args, tally: str, start, queue):
    """One process of the group: build the training loader as pre-training does, iterate it; report (rank, images
    delivered to this rank, seconds)."""
    os.environ.update(ACCELERATE_USE_CPU="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    import torch

    torch.set_num_threads(1)
    from dmae_hf.training import data_setup, loop, streams
    from dmae_hf.training.arguments import DataArguments, OptimizationArguments, RunArguments

    streams.ImageDecoder = counting_decoder(tally)  # DataSetup builds its decoders through the module attribute
    accelerator = loop.make_accelerator(OptimizationArguments(batch_size=args.batch, grad_accum=1),
                                        RunArguments(output_dir=os.path.join(os.path.dirname(tally), "run"),
                                                     cpu=True))
    setup = data_setup.DataSetup(DataArguments(dataset=folder, decode_size=args.decode_size, shuffle_buffer=256,
                                            num_workers=args.workers, data_mode=mode),
                              image_size=224, with_labels=False, seed=0, rank=accelerator.process_index,
                              num_processes=accelerator.num_processes)
    loader = setup.train_loader(accelerator, args.batch, args.workers)
    data_setup.set_epoch(loader, setup.train, 0)
    open(tally, "wb").close()  # count from here: the setup's validation decodes are not the benchmark's
    start.wait()
    t0, count = time.perf_counter(), 0
    for batch in data_setup.rng_neutral(loader):
        count += batch["pixel_values"].shape[0]
    seconds = time.perf_counter() - t0
    accelerator.wait_for_everyone()
    queue.put((rank, count, seconds))
    accelerator.end_training()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(folder: str, mode: str, processes: int, args, tmp: str) -> dict:
    ctx = mp.get_context("fork")
    start, queue, port = ctx.Barrier(processes), ctx.Queue(), free_port()
    tallies = [os.path.join(tmp, f"{mode}-{processes}", f"rank{r}.tally") for r in range(processes)]
    os.makedirs(os.path.dirname(tallies[0]))
    procs = [ctx.Process(target=run_rank, args=(folder, mode, r, processes, port, args, tallies[r], start, queue))
             for r in range(processes)]
    for p in procs:
        p.start()
    results = sorted(queue.get() for _ in procs)
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"{mode} with {processes} processes: a rank exited with status {p.exitcode}.")
    decoded = [os.path.getsize(t) for t in tallies]
    images, wall = sum(r[1] for r in results), max(r[2] for r in results)
    return {"images": images, "seconds": wall, "rate": images / wall, "decoded": decoded}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                           "tests", "data"),
                        help="folder holding imagenet-sample/ (default: the test fixture, tests/data)")
    parser.add_argument("--images", type=int, default=2000, help="examples: the 20 photos repeated")
    parser.add_argument("--shards", type=int, default=8, help="parquet shards of the repeated set")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2],
                        help="process counts; each count above 1 is run in both modes, 1 is the baseline")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers per process (--num-workers)")
    parser.add_argument("--decode-size", type=int, default=256, help="resize shortest edge + center crop")
    parser.add_argument("--batch", type=int, default=64, help="batch size per process (--batch-size)")
    args = parser.parse_args(argv)
    if any(p < 1 for p in args.processes):
        raise ValueError(f"--processes must be positive counts, got {args.processes}.")
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "repeated")
        write_repeated(os.path.join(args.data_dir, "imagenet-sample"), folder, args.images, args.shards)
        rows = [("baseline: 1 process", measure(folder, "per-rank", 1, args, tmp))]
        for p in sorted({p for p in args.processes if p > 1}):
            rows += [(f"{mode}, {p} processes", measure(folder, mode, p, args, tmp))
                     for mode in ("per-rank", "dispatch")]
    base = rows[0][1]["rate"]
    print(f"{args.images} images ({args.shards} shards), decode {args.decode_size}px, batch {args.batch} per "
          f"process, {args.workers} worker(s) per process, {os.cpu_count()} CPUs")
    print("| mode | images delivered | seconds | images/s | x baseline | decoded per rank | rank 0 decodes |\n"
          "|---|---|---|---|---|---|---|")
    for name, r in rows:
        share = r["decoded"][0] / sum(r["decoded"])
        print(f"| {name} | {r['images']} | {r['seconds']:.1f} | {r['rate']:.0f} | {r['rate'] / base:.2f} | "
              f"{' + '.join(map(str, r['decoded']))} | {100 * share:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
