"""One LoRA step at a time in plasticity and in PyTorch + PEFT, by turns: the ratio of the two
training steps on a host whose speed drifts within seconds. Reports figures; asserts nothing.

    python3 benches/interleave_peft.py ARCH SHAPE [THREADS] [PAIRS] [WARMUP] [idle]

ARCH: llama, gpt_neox or gpt2; SHAPE: tiny, 14m, 70m-body, 70m or 160m (as benches/compare_peft.sh);
THREADS (default 2), PAIRS (default 30), WARMUP steps on each side (default 3).

benches/compare_peft.sh runs each side for several seconds and pairs the two within a round; a
round's two halves can still meet different minutes of a shared host (its rounds' ratios spread
by a quarter). Here `step_timing serve` and `compare_peft.py serve` stay loaded side by side on the
same random checkpoint and the same batch, and take one step each per pair, in the order AB, BA,
AB, ... so that neither always goes first, each step after GAP_S seconds of idle so that the other
side's threads have stopped spinning. A pair's ratio is plasticity's tokens/s over PyTorch +
PEFT's in that pair. The report gives each side's median tokens/s, the median of the pairs'
ratios and a 95% confidence interval for that median (distribution-free: the order statistics
whose ranks the binomial distribution gives), which says whether the data can tell a ratio from
a target.

With `idle`, the check that the idle before each step does not favour one side: each stack
alone takes PAIRS pairs of a step after GAP_S seconds of idle and a step straight after it, and
the report gives the two medians per stack.

Needs the release build of examples/step_timing (built here) and .venv-bench (created by
benches/compare_peft.sh).
"""
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

TOKENS = 1024
GAP_S = 0.3


def median_interval(xs, level=0.95):
    """The order statistics (lo, hi) that cover the median of xs' distribution with probability >= level
    (None when there are too few: 6 or more for 95%)."""
    n, xs = len(xs), sorted(xs)
    below = 0.0  # P(Binomial(n, 1/2) < k)
    k = 0
    while k < n and below + math.comb(n, k) / 2**n <= (1 - level) / 2:
        below += math.comb(n, k) / 2**n
        k += 1
    return (xs[k - 1], xs[n - k]) if k > 0 else None


class Server:
    """A `serve` process: one step per request, its seconds on a line."""

    def __init__(self, name, argv, env):
        self.name = name
        self.proc = subprocess.Popen(argv, env={**os.environ, **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            sys.exit(f"interleave_peft.py: {name} did not start (said {line!r})")

    def step(self):
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"interleave_peft.py: {self.name} stopped")
        return float(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main():
    arch, shape = sys.argv[1], sys.argv[2]
    threads, pairs, warmup = (int(a) for a in (sys.argv[3:6] + ["2", "30", "3"][len(sys.argv[3:6]):]))
    idle = sys.argv[6:] == ["idle"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    python = os.path.join(root, ".venv-bench", "bin", "python")
    if not os.access(python, os.X_OK):
        sys.exit("interleave_peft.py: no .venv-bench; benches/compare_peft.sh creates it")
    subprocess.run(["cargo", "build", "-q", "--release", "--example", "step_timing"], cwd=root, check=True)
    binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target")), "release", "examples",
                          "step_timing")
    with tempfile.TemporaryDirectory() as work:
        model = os.path.join(work, "model")
        subprocess.run([binary, "write", model, arch, shape], check=True)
        ours = Server("plasticity", [binary, "serve", model, str(warmup)], {"RAYON_NUM_THREADS": str(threads)})
        theirs = Server("pytorch+peft", [python, os.path.join(root, "benches", "compare_peft.py"), "serve", model,
                                         str(warmup), str(threads)], {"OMP_NUM_THREADS": str(threads)})
        if idle:
            for server in (ours, theirs):
                idle_check(server, pairs)
        else:
            report(arch, shape, threads, alternate(ours, theirs, pairs))
        ours.close()
        theirs.close()


def alternate(ours, theirs, pairs):
    """(plasticity's, PyTorch + PEFT's) tokens/s of each pair, the first side alternating."""
    rows = []
    for i in range(pairs):
        seconds = {}
        for server in (ours, theirs) if i % 2 == 0 else (theirs, ours):
            time.sleep(GAP_S)
            seconds[server.name] = server.step()
        rows.append((TOKENS / seconds["plasticity"], TOKENS / seconds["pytorch+peft"]))
    return rows


def idle_check(server, pairs):
    """One stack's tokens/s after GAP_S of idle against straight after a step."""
    after_idle, back_to_back = [], []
    for _ in range(pairs):
        time.sleep(GAP_S)
        after_idle.append(TOKENS / server.step())
        back_to_back.append(TOKENS / server.step())
    print(f"{server.name}: {statistics.median(after_idle):.0f} tok/s after {GAP_S} s idle, "
          f"{statistics.median(back_to_back):.0f} straight after a step ({pairs} of each)")


def report(arch, shape, threads, rows):
    ratios = [a / b for a, b in rows]
    interval = median_interval(ratios)
    interval = f"95% interval {interval[0]:.3f}-{interval[1]:.3f}" if interval else "too few pairs for a 95% interval"
    print(f"{arch} {shape}, {threads} threads, {len(rows)} pairs of steps: plasticity "
          f"{statistics.median(a for a, _ in rows):.0f} tok/s, pytorch+peft {statistics.median(b for _, b in rows):.0f} "
          f"tok/s; ratio median {statistics.median(ratios):.3f}, {interval}, "
          f"pairs {min(ratios):.3f}-{max(ratios):.3f}")


if __name__ == "__main__":
    main()
