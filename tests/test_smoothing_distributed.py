"""Within-image sharding: `certify(..., distributed=True)` in two processes gives the single-process certificates."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dmae_hf.smoothing import certify, predict


class ThreeWay(torch.nn.Module):
    """Three classes from two pixel statistics, so counts are spread over classes and blocks."""

    def forward(self, z):
        a, b = z[:, 0].flatten(1).mean(1) - 0.5, z[:, 1].flatten(1).mean(1) - 0.5
        return torch.stack([a, b, -a - b], dim=1)


def images():
    x = torch.full((2, 3, 8, 8), 0.5)
    x[0, 0] += 0.02
    x[1, 1] -= 0.01
    return x


def run_all(distributed: bool) -> list:
    f, x = ThreeWay(), images()
    out = []
    # n0 = 100 < NOISE_BLOCK: the second process draws no selection sample at all.
    for kwargs in [dict(n0=100, n=1500, batch_size=300), dict(n0=300, n=4000, batch_size=512, method="adaptive")]:
        out += [c.counts + [c.prediction, c.radius, c.num_samples]
                for c in certify(f, x, sigma=0.05, alpha=0.01, seed=3, distributed=distributed, **kwargs)]
    out += [p.counts for p in predict(f, x, sigma=0.05, n=700, alpha=0.01, batch_size=128, seed=4,
                                      distributed=distributed)]
    return out


def worker(rank: int, world: int, init_file: str, result_file: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        with open(f"{result_file}.{rank}", "w") as f:
            json.dump(run_all(distributed=True), f)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_processes_match_one(tmp_path):
    expected = json.loads(json.dumps(run_all(distributed=False)))
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path / "result")), nprocs=2, join=True)
    for rank in range(2):
        assert json.loads((tmp_path / f"result.{rank}").read_text()) == expected


def test_distributed_without_process_group_is_a_clear_error():
    with pytest.raises(ValueError, match="process group"):
        certify(ThreeWay(), images()[0], sigma=0.1, n0=10, n=100, distributed=True)
