"""Cost of `dltips.watch` in a hand-written loop: step time and peak memory.

A small CNN (28x28 inputs) and an MLP at batch 64, AdamW, on the CPU (or the
GPU with --device cuda): the bare loop against `watch()` at its default
settings and against every monitor on every step (`every=1`). Runs are
interleaved in one process; medians of the per-step times and their ratios to
the bare loop of the same repeat are printed.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` above the memory
held before the run; on the CPU, a fresh process per measurement, its peak
resident set above the resident set before the model was built (see
`peak_memory_mib`), three repeats.

    python bench/monitor_overhead.py [--repeats 7] [--steps 100] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dltips import watch

BATCH = 64


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.Tanh(),
                         nn.Linear(256, 10))


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def train(make_model, mode: str, steps: int, device: torch.device) -> float:
    """Seconds per step of one training run; mode is bare, default or every-step."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16 * BATCH, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (len(x),), generator=g).to(device)
    model = make_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    watcher = {"bare": contextlib.nullcontext(), "default": watch(model, optimizer),
               "every-step": watch(model, optimizer, every=1)}[mode]
    with watcher as w:
        start = time.perf_counter()
        for step in range(steps):
            i = (step % 16) * BATCH
            loss = F.cross_entropy(model(x[i:i + BATCH]), y[i:i + BATCH])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if w is not None:
                w.log(loss=loss)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
    if w is not None:
        w.findings()
    return seconds


def peak_memory_mib(model_name: str, mode: str, steps: int, device: torch.device) -> float:
    """Peak memory of a training run above what was held before it, in MiB.

    CUDA: `max_memory_allocated`, in this process. CPU: a fresh process whose
    peak resident set (VmHWM) is compared with its resident set before the
    model is built; glibc is told to return freed blocks at once so that the
    resident set follows the live tensors.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        train(MODELS[model_name], mode, steps, device)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--memory-child", model_name, mode, str(steps)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


def _memory_child(model_name: str, mode: str, steps: int) -> None:
    torch.set_num_threads(1)
    train(MODELS[model_name], mode, 2, torch.device("cpu"))  # import and load kernels before measuring
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before = _status_kib("VmRSS")
    train(MODELS[model_name], mode, steps, torch.device("cpu"))
    print((_status_kib("VmHWM") - before) / 1024)


MODELS = {"small CNN": small_cnn, "MLP": mlp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        name, mode, steps = args.memory_child
        return _memory_child(name, mode, int(steps))
    device = torch.device(args.device)
    modes = ("bare", "default", "every-step")
    print(f"device {device}, batch {BATCH}, {args.steps} steps, {args.repeats} interleaved repeats; "
          f"watch() default every={watch.__kwdefaults__['every']}")
    for name, make_model in MODELS.items():
        for mode in modes:  # warm-up
            train(make_model, mode, 10, device)
        times = {m: [] for m in modes}
        memory = {m: [] for m in modes}
        for repeat in range(args.repeats):
            for mode in modes:
                times[mode].append(train(make_model, mode, args.steps, device))
                if repeat < 3:
                    memory[mode].append(peak_memory_mib(name, mode, min(args.steps, 60), device))
        base_t = statistics.median(times["bare"])
        base_m = statistics.median(memory["bare"])
        print(f"\n{name}: bare loop {base_t * 1e3:.2f} ms/step, peak memory {base_m:.1f} MiB")
        for mode in modes[1:]:
            ratio_t = statistics.median(t / b for t, b in zip(times[mode], times["bare"]))
            ratio_m = statistics.median(memory[mode]) / base_m
            print(f"  {mode:<10} step time x{ratio_t:.3f} (median {statistics.median(times[mode]) * 1e3:.2f} ms), "
                  f"peak memory x{ratio_m:.3f} ({statistics.median(memory[mode]):.1f} MiB)")


if __name__ == "__main__":
    main()
