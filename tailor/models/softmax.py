"""The full softmax over the catalogue, its loss and gradient computed together, block by block.

`nn.functional.cross_entropy(torch.addmm(bias, h, items.T), targets)` keeps the whole (rows x
items) logit matrix for the backward pass and walks it some eight times (the product, the
log-softmax, its backward, the one-hot gradient, two products back). Here each block of
`BLOCK_ROWS` rows is scored, turned into its softmax and its gradient in place while it is
still in the CPU's cache, and multiplied back at once: the backward pass only scales two small
saved gradients. The logits never exist whole, so memory is a few `BLOCK_ROWS x items` buffers
whatever the batch: one step of 1,050 rows at 100,000 items peaked 1.36 GB above its inputs the
old way and 0.36 GB in blocks (`benchmarks/catalogue_softmax.py`).

With `low_precision` the three products run in bfloat16 (on a device that has it natively they
are 2-3x faster than fp32 at this width) while the bias, the softmax and the loss stay in fp32.
"""

from __future__ import annotations

import torch

# Rows scored at a time: 384 rows x 1,500 items of fp32 is 2.3 MB, near a core's share of L2 +
# L3 here; 256-768 rows measured the same in a one-off loop, the whole batch at once 1.1x slower.
BLOCK_ROWS = 384


class _CatalogueCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, items, bias, targets, low_precision, block):
        dtype = torch.bfloat16 if low_precision else torch.float32
        device = h.device
        with torch.autocast(device.type, enabled=False):
            h_, items_ = h.to(dtype), items.to(dtype)
            bias = bias.float()
            grad_h = torch.empty(h.shape, dtype=torch.float32, device=device)
            grad_items = torch.zeros(items.shape, dtype=torch.float32, device=device)
            total = torch.zeros((), dtype=torch.float32, device=device)
            # One set of buffers for every block, written in place: a fresh block-sized
            # tensor per block is fresh memory the kernels fault in page by page (0.62-0.67x
            # the single product's speed, measured, against about even with shared buffers).
            logits = torch.empty(block, len(items), dtype=torch.float32, device=device)
            probs = torch.empty_like(logits)  # log-softmax written apart from its input
            low = (
                torch.empty(block, len(items), dtype=dtype, device=device)
                if low_precision
                else probs
            )
            h_block = torch.zeros(block, h.shape[1], dtype=dtype, device=device)
            rows_out = torch.empty(block, h.shape[1], dtype=dtype, device=device)
            items_out = torch.empty(items.shape, dtype=dtype, device=device)
            for start in range(0, len(targets), block):
                target = targets[start : start + block]
                n = len(target)
                # Every block the same shape (the last padded with zero rows): oneDNN's bf16
                # products build a kernel per shape, and a batch's row count varies.
                h_block[:n] = h_[start : start + n]
                if n < block:
                    h_block[n:] = 0.0
                if low_precision:
                    torch.mm(h_block, items_.T, out=low)
                    torch.add(low, bias, out=logits)
                else:
                    torch.addmm(bias, h_block, items_.T, out=logits)
                torch.log_softmax(logits, dim=1, out=probs)
                at = (torch.arange(n, device=device), target)
                total -= probs[at].sum()
                # d(-log p[target]) / d logits = softmax - one-hot, made in place.
                grad = probs.exp_()
                grad[at] -= 1.0
                grad[n:] = 0.0  # padding rows
                if low_precision:
                    low.copy_(grad)
                torch.mm(low, items_, out=rows_out)
                grad_h[start : start + n] = rows_out[:n]
                torch.mm(low.T, h_block, out=items_out)
                grad_items += items_out
        n = max(len(targets), 1)
        ctx.save_for_backward(grad_h, grad_items)
        ctx.dtypes = (h.dtype, items.dtype)
        return total / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_items = ctx.saved_tensors
        scale = grad_loss.float() / max(len(grad_h), 1)
        h_dtype, items_dtype = ctx.dtypes
        return (grad_h * scale).to(h_dtype), (grad_items * scale).to(items_dtype), *[None] * 4


def catalogue_cross_entropy(
    h: torch.Tensor,
    items: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    low_precision: bool = False,
    block: int = BLOCK_ROWS,
) -> torch.Tensor:
    """Mean of -log softmax(h @ items.T + bias)[row, target]: `cross_entropy` of `addmm`, with
    gradients for `h` and `items` (the bias is a constant). `targets` are column positions."""
    if block < 1:
        raise ValueError(f"block must be at least 1 row, got {block}")
    return _CatalogueCrossEntropy.apply(h, items, bias, targets, low_precision, block)
