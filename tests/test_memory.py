"""Memory of `certify` is O(batch_size) at any n: the noise blocks are drawn lazily, one at a time.

Each n runs in a fresh subprocess (peak RSS, `ru_maxrss`, only grows), after a warm-up certificate that loads the
libraries and sizes the buffers; the figure is the peak minus the warm-up peak. A trivial base classifier on a
1x2x2 image keeps n = 10**7 at a few seconds on one core, so what grows with n is the certifier's own bookkeeping.
"""

import subprocess
import sys

from conftest import REPO_ROOT

SCRIPT = """
import resource, sys, time, torch
from dmae_hf.smoothing import certify
torch.set_num_threads(1)
n = int(sys.argv[1])
f, x = (lambda z: z.flatten(1)[:, :2]), torch.full((1, 2, 2), 0.5)
certify(f, x, 0.25, n0=100, n=10_000, batch_size=1000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
cert = certify(f, x, 0.25, n0=100, n=n, batch_size=1000)
assert sum(cert.counts) == n
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before / 1024, peak / 1024, time.perf_counter() - start)
"""


def peak_rss_mb(n: int) -> tuple[float, float, float]:
    """(warm-up peak MB, peak MB, seconds) of a certificate at n in a fresh process."""
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(n)], capture_output=True, text=True, timeout=300,
                         cwd=REPO_ROOT, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "PATH": ""})
    assert run.returncode == 0, run.stderr
    return tuple(float(v) for v in run.stdout.split())


def test_peak_memory_does_not_grow_with_n():
    figures = {n: peak_rss_mb(n) for n in [10**4, 10**6, 10**7]}
    for n, (before, peak, seconds) in figures.items():
        print(f"n = {n:>8}: peak RSS {peak:.1f} MB ({peak - before:+.1f} MB over the warm-up), {seconds:.1f} s")
    base = figures[10**4][1]
    assert figures[10**7][1] - base < 8, figures  # the list of all blocks made it +17 MB here (+578 MB in issue 23)
    assert figures[10**6][1] - base < 8, figures
