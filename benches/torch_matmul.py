"""PyTorch's own f32 matrix product rate at the block shapes of benches/prepacked.rs, for
comparison with the gemm crate's (`cargo bench --bench prepacked`, `step_timing kernel`).
Reports figures; asserts nothing. Run with the pinned stack of benches/requirements-bench.txt:

    .venv-bench/bin/python benches/torch_matmul.py [THREADS]
"""
import sys
import time

import torch

SHAPES = [(256, 512, 2048), (1024, 512, 2048), (256, 768, 3072), (1024, 768, 3072)]


def rate(flops, f):
    """GFLOP/s of f: the median of 15 calls after 3."""
    for _ in range(3):
        f()
    secs = []
    for _ in range(15):
        start = time.perf_counter()
        f()
        secs.append(time.perf_counter() - start)
    return flops / sorted(secs)[len(secs) // 2] / 1e9


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} thread(s), GFLOP/s")
    for tokens, inner, out in SHAPES:
        x, w, dy = torch.randn(tokens, inner), torch.randn(out, inner), torch.randn(tokens, out)
        flops = 2.0 * tokens * inner * out
        forward = rate(flops, lambda: x @ w.t())
        backward = rate(flops, lambda: dy @ w)
        print(f"{tokens} x {inner} x {out}: x @ W^T {forward:6.1f}   dy @ W {backward:6.1f}")


if __name__ == "__main__":
    main()
