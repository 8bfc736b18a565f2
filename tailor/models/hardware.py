"""What the machine can give training right now: free cores, and whether bf16 pays.

Both are read at fit time, not at import: a nightly retrain shares its machine with whatever
else runs then (a Prefect server, a data loader, another job), and more torch threads than
free cores makes every step wait on the slowest thread.
"""

from __future__ import annotations

import os
import time

import torch


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores from /proc/stat; None where there is none.

    Steal (time the hypervisor gave to other machines) counts in neither: it is not a process
    on this machine that our threads would contend with.
    """
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 8 or fields[0] != "cpu":
        return None
    user, nice, system, idle, iowait, irq, softirq = (int(v) for v in fields[1:8])
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_cores(sample_seconds: float = 0.25) -> int:
    """Cores nobody else is using, measured over `sample_seconds` (at least 1).

    The idle share of the whole machine times its core count, capped by this process's
    affinity; where /proc/stat cannot be read, every usable core counts as free.
    """
    usable = usable_cores()
    before = _cpu_times()
    if before is None:
        return usable
    time.sleep(sample_seconds)
    after = _cpu_times()
    if after is None or after[1] <= before[1]:
        return usable
    busy_share = (after[0] - before[0]) / (after[1] - before[1])
    total = os.cpu_count() or usable
    # Round to the nearest core: a core busy a third of the time still serves a thread well.
    return max(1, min(usable, round((1.0 - busy_share) * total)))


def native_bf16(device: str) -> bool:
    """Whether `device` computes in bfloat16 natively (not emulated).

    CUDA: what the device reports. CPU: AVX512-BF16 or AMX, through oneDNN.
    """
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume emulation
        return False


def autocast_bf16(device: str) -> bool:
    """Whether `train.precision = auto` trains in bf16: on a CUDA device that has it natively.

    Never on a CPU, native bf16 included: on a 2-core Sapphire Rapids (AMX-BF16) an epoch of
    MovieLens-100K took 1.3x longer under autocast and peaked at 3x the memory, because at this
    model's width casting activations and the catalogue's logits costs more than the faster
    matrix products save (casting only the logits' product was slower still). The catalogue's
    products alone, in blocks of one shape (`train.catalogue_precision`), do pay on a CPU with
    native bf16: see `tailor.models.softmax`.
    """
    return device.startswith("cuda") and native_bf16(device)
