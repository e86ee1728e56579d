"""Per-step cost of SCAN's bookkeeping in the CLIP trainer's loop, and host reads per step.

Providers, measured side by side in one run (rounds interleaved, so load on the machine hits
all alike), each a `train_one_epoch` of the tiny CLIP model over in-memory batches:

  none         --prune none (NoPruning): the plain step
  mutation     --prune scan in a mutation epoch (no losses are observed)
  preparation  --prune scan in a preparation epoch: per-sample losses gathered, candidates
               chosen on the device each step, chosen ids flushed to the engine at log steps

Reported: median step time (ms) per provider and batch size, the ratio to `none`, and host
reads per step counted by tests/host_reads.py (epochs of two lengths, so the end-of-epoch
reads cancel). Whole-step ratios on a shared 2-core machine move by a few percent from load alone,
so the preparation step's own bookkeeping (gather_batch + observe_batch, and the flush of
--log-every steps' ids, amortised) is also timed alone, as a share of the `none` step.
Target: preparation <= 1.03x none, mutation ~1.00x, 0 host reads per step.
On a GPU (--device cuda) --sync-debug runs every step under
torch.cuda.set_sync_debug_mode("error"), which raises on any synchronisation outside the
epoch's end (bench/gpu_check.sh step 7).

    python bench/bench_train_step.py [--batches 64 512] [--steps 12] [--rounds 3] [--device cuda --sync-debug]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

# AdamW's tiny second moments turn denormal on the CPU and slow every step about 30x (a GPU flushes
# them). Flushed before any thread pool starts, so the step SCAN's bookkeeping is compared with is
# the arithmetic, not denormal stalls.
torch.set_flush_denormal(True)

from scan_fast.schedule import Scan
from scan_fast.schedule.no_pruning import NoPruning
from scan_fast.data.read.batch import Batch
from scan_fast.train.clip import ClipTask
from scan_fast.train.clip_model import Clip
from scan_fast.train.config import ClipConfig
from scan_fast.train.loop import Step, gather_batch, train_one_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from host_reads import count_host_reads  # noqa: E402  (a test instrument: tests/host_reads.py)

PROVIDERS = ("none", "mutation", "preparation")
CONTEXT = 16


def _schedule(provider, num_samples):
    """A schedule at the start of the provider's epoch (2 warm-up epochs end without training)."""
    if provider == "none":
        return NoPruning(num_samples), 0
    scan = Scan(num_samples, prune_threshold=1.0)
    epoch = 2 if provider == "preparation" else 3
    for e in range(epoch):
        kept = scan.epoch_indices(e)
        if scan.needs_losses(e):
            rng = np.random.default_rng(e)
            scan.observe(kept, rng.random(kept.size), rng.random(kept.size))
        scan.end_epoch(e, 1.0)
    return scan, epoch


def _sync_guarded(batches):
    """Yield the batches with CUDA synchronisations raising during each step (not after the last)."""
    for batch in batches:
        torch.cuda.set_sync_debug_mode("error")
        yield batch
    torch.cuda.set_sync_debug_mode(0)


def _epoch(model, provider, batch, steps, log_every, device="cpu", sync_debug=False, count_reads=False):
    """(seconds per step, host reads) of one epoch of `steps` steps."""
    schedule, epoch = _schedule(provider, max(4 * batch * steps, 1024))
    kept = schedule.epoch_indices(epoch)
    generator = torch.Generator().manual_seed(batch)
    batches = [Batch(images=torch.randn(batch, 3, model.image_size, model.image_size, generator=generator).to(device),
                     tokens=torch.randint(1, 1000, (batch, CONTEXT), generator=generator).to(device),
                     ids=torch.from_numpy(kept[i * batch:(i + 1) * batch]).to(device)) for i in range(steps)]
    cfg = ClipConfig(lr=1e-4, warmup_epochs=0.0, epochs=10, log_every=log_every)
    step = Step(task=ClipTask(cfg), model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
                scaler=torch.amp.GradScaler("cpu", enabled=False), schedule=schedule,
                autocast=(lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device != "cpu" else None)
    loader = _sync_guarded(batches) if sync_debug else batches
    if count_reads:  # patched tensor methods cost time: count and time in separate epochs
        with count_host_reads() as reads:
            train_one_epoch(step, loader, epoch, steps, global_step=0)
        return None, reads.count
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_one_epoch(step, loader, epoch, steps, global_step=0)
    if device != "cpu":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, None


def _bookkeeping(batch, log_every, device, repeats=200):
    """Seconds per step of a preparation step's schedule work alone: gather, device rule, amortised flush."""
    schedule, epoch = _schedule("preparation", max(batch * repeats, 1024))
    kept = torch.from_numpy(schedule.epoch_indices(epoch)).to(device)
    generator = torch.Generator().manual_seed(1)
    losses = torch.rand(2, repeats, batch, generator=generator).to(device)
    start = time.perf_counter()
    for i in range(repeats):
        ids, loss_a, loss_b = gather_batch(kept[i * batch:(i + 1) * batch], losses[0, i], losses[1, i])
        schedule.observe_batch(ids, loss_a, loss_b)
        if (i + 1) % log_every == 0:
            schedule.flush()
    schedule.flush()
    if device != "cpu":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--steps", type=int, default=12, help="steps per timed epoch")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per provider")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast there)")
    parser.add_argument("--sync-debug", action="store_true",
                        help="CUDA: raise on any host synchronisation inside a step (log steps: use a larger "
                             "--log-every than --steps)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Clip(context_length=CONTEXT).to(args.device)
    print(f"# tiny CLIP ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters), "
          f"{torch.get_num_threads()} threads, {args.steps} steps an epoch, log every {args.log_every} steps")
    print(f"{'batch':>6} {'provider':>12} {'ms/step':>9} {'vs none':>8} {'host reads/step':>16} "
          f"{'bookkeeping alone':>18}")
    for batch in args.batches:
        times = {p: [] for p in PROVIDERS}
        for provider in PROVIDERS:  # warm-up: allocator, autograd graph, thread pools
            _epoch(model, provider, batch, 2, args.log_every, args.device)
        for _ in range(args.rounds):
            for provider in PROVIDERS:
                times[provider].append(_epoch(model, provider, batch, args.steps, args.log_every, args.device,
                                              args.sync_debug)[0])
        base = statistics.median(times["none"])
        for provider in PROVIDERS:
            # reads per step: two epoch lengths with no log step inside, so the end-of-epoch reads cancel
            short = _epoch(model, provider, batch, 2, 10**9, args.device, count_reads=True)[1]
            long = _epoch(model, provider, batch, 4, 10**9, args.device, count_reads=True)[1]
            median = statistics.median(times[provider])
            alone = ""
            if provider == "preparation":
                seconds = _bookkeeping(batch, args.log_every, args.device)
                alone = f"{seconds * 1e3:.2f} ms = {seconds / base:.1%}"
            print(f"{batch:>6} {provider:>12} {median * 1e3:>9.1f} {median / base:>7.3f}x {(long - short) / 2:>16.1f} "
                  f"{alone:>18}")


if __name__ == "__main__":
    main()
