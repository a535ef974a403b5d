#!/usr/bin/env python3
"""Share of a LoRA step's perf samples by the engine's operation, from `perf script` output
of a call-graph recording (`perf record --call-graph dwarf`), read on stdin: each sample goes
to the innermost frame on its stack that names an operation (the products inside the fused
MLP count as the fused MLP, candle's sums inside the backward pass as "candle's backward";
helpers shared by an op's forward and backward, such as attention's strided products, name
no operation).
Used by benches/profile_step.sh ARCH SHAPE THREADS STEPS ops. Reports figures; asserts nothing.
"""
import collections
import re
import sys

OPS = [
    (r"QkvAttention as candle_core::custom_op::CustomOp[13]>::bwd|QkvAttention::backward|sdpa::Kernel::backward", "attention, backward"),
    (r"QkvAttention as candle_core::custom_op::CustomOp[13]>::cpu_fwd|QkvAttention::forward|sdpa::Kernel::forward|head_forward", "attention, forward"),
    (r"head_loss", "output head + loss"),
    (r"fused_mlp", "MLP projection + activation (fwd and bwd)"),
    (r"lora::fused", "adapted linear layer (fwd and bwd)"),
    (r"FrozenLinearResidual.*cpu_fwd", "frozen projection onto the residual, forward"),
    (r"FrozenMatmul.*cpu_fwd", "other frozen projections, forward"),
    (r"frozen::input_grad", "frozen projections, dL/dx"),
    (r"model::fused::|rope", "norms, rotary, other activations"),
    (r"GradStore::or_insert", "candle's backward: zero-filled gradients"),
    (r"optim::|add_grads", "optimizer and shard sums"),
    (r"backprop::.*backward", "candle's backward: sums and other ops"),
    (r"::forward|model_loss_sum|hidden_states", "candle's forward: other ops"),
]
PATTERNS = [(re.compile(p), name) for p, name in OPS]


def frames(block):
    return [re.sub(r"^\s*[0-9a-f]+ ", "", line.strip()) for line in block.strip().split("\n") if line.strip()]


def main():
    counts, total = collections.Counter(), 0
    for block in sys.stdin.read().split("\n\n"):
        stack = frames(block)
        if not stack:
            continue
        total += 1
        name = next((n for f in stack for p, n in PATTERNS if p.search(f)), "outside any operation")
        counts[name] += 1
    for _, name in OPS + [("", "outside any operation")]:
        if counts[name]:
            print(f"  {name:<48} {100 * counts[name] / max(total, 1):5.1f}%")


main()
