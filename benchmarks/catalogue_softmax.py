"""One training step's full softmax over the catalogue, three ways, side by side.

    python benchmarks/catalogue_softmax.py [--items 1500,20000,100000] [--rows 1050]
                                           [--dim 64] [--steps 30] [--threads 2]

For each catalogue size: the loss and its backward pass as `cross_entropy(addmm(...))` (the
way before), and `tailor.models.softmax.catalogue_cross_entropy` in fp32 and with bf16
products. `rows` is how many targets one step scores (a MovieLens batch of 32 windows has
about 1,050). Each way runs in its own child process, so its peak memory is its own: the
table gives the median seconds per step (over `--steps`, after two to warm up), the speed-up
over the way before, the peak memory above what the inputs take, and the largest relative
difference of the gradients from the way before's.

bf16 products are fast only where the CPU computes bf16 natively (AVX512-BF16 or AMX); the
table says whether this one does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

WAYS = ("cross_entropy(addmm)", "blocks fp32", "blocks bf16")


def child(way: str, items: int, rows: int, dim: int, steps: int, threads: int) -> dict:
    import resource
    import time

    import numpy as np
    import torch
    from torch import nn

    from tailor.models.softmax import catalogue_cross_entropy

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(rows, dim, generator=g) * 0.5
    items0 = torch.randn(items, dim, generator=g) * 0.5
    bias = -torch.log1p(torch.rand(items, generator=g) * 50)
    targets = torch.randint(items, (rows,), generator=g)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        h, weights = h0.clone().requires_grad_(), items0.clone().requires_grad_()
        if way == WAYS[0]:
            loss = nn.functional.cross_entropy(torch.addmm(bias, h, weights.T), targets)
        else:
            loss = catalogue_cross_entropy(h, weights, bias, targets, way == WAYS[2])
        loss.backward()
        return h.grad, weights.grad

    seconds = []
    for i in range(steps + 2):
        started = time.perf_counter()
        grads = step()
        if i >= 2:
            seconds.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.save(sys.stdout.buffer, np.concatenate([g.numpy().ravel() for g in grads]))
    return {"seconds": float(np.median(seconds)), "peak_mb": (peak - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", default="1500,20000,100000")
    parser.add_argument("--rows", type=int, default=1050)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = child(**spec)
        sys.stderr.write("RESULT " + json.dumps(result) + "\n")
        return

    import io

    import numpy as np
    import torch

    from tailor.models.hardware import native_bf16

    print(
        f"{args.rows} rows a step, width {args.dim}, {args.threads} threads; native bf16 on "
        f"this CPU: {'yes' if native_bf16('cpu') else 'no (bf16 is emulated: slow)'}\n"
    )
    print("| items | way | ms / step | x before | peak MB above inputs | gradient difference |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for items in (int(v) for v in args.items.split(",")):
        base = None
        for way in WAYS:
            spec = {
                "way": way,
                "items": items,
                "rows": args.rows,
                "dim": args.dim,
                "steps": args.steps,
                "threads": args.threads,
            }
            done = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                capture_output=True,
                check=False,
            )
            if done.returncode != 0:
                raise SystemExit(done.stderr.decode()[-2000:])
            line = [x for x in done.stderr.decode().splitlines() if x.startswith("RESULT ")][-1]
            result = json.loads(line.removeprefix("RESULT "))
            grads = torch.as_tensor(np.load(io.BytesIO(done.stdout)))
            if base is None:
                base = (result["seconds"], grads)
            difference = float((grads - base[1]).norm() / base[1].norm())
            print(
                f"| {items:,} | {way} | {result['seconds'] * 1e3:.2f} | "
                f"{base[0] / result['seconds']:.2f}x | {result['peak_mb']:.0f} | "
                f"{difference:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
