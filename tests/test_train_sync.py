"""The training step makes no host read outside log steps (tests/host_reads.py counts them).

An epoch of S steps with no log step inside it must read the host the same number of times
whatever S is (the reads of the end-of-epoch check only), for every schedule and phase,
preparation epochs included: per-step reads are zero. On a GPU, bench/gpu_check.sh checks
the same with torch.cuda.set_sync_debug_mode("error").
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scan_fast.data.read.batch import Batch
from scan_fast.ops import clip_loss_per_sample
from scan_fast.schedule import Scan
from scan_fast.schedule.infobatch import InfoBatch
from scan_fast.schedule.no_pruning import NoPruning
from host_reads import count_host_reads
from scan_fast.train.config import TrainConfig
from scan_fast.train.loop import NonFiniteLoss, Step, train_one_epoch
from scan_fast.train.task import Task

N, BATCH = 256, 16


class TinyClip(nn.Module):
    def __init__(self):
        super().__init__()
        self.image, self.text = nn.Linear(8, 16), nn.Linear(8, 16)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x, y):
        return clip_loss_per_sample(F.normalize(self.image(x), dim=1), F.normalize(self.text(y), dim=1),
                                    self.logit_scale.exp())


class TinyTask(Task):
    def forward(self, model, batch, epoch):
        return model(batch.images, batch.tokens)


def _step(model, schedule, log_every):
    cfg = TrainConfig(lr=1e-3, warmup_epochs=0.0, epochs=10, log_every=log_every)
    return Step(task=TinyTask(cfg), model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                scaler=torch.amp.GradScaler("cpu", enabled=False), schedule=schedule)


def _schedule(kind, epoch):
    """A schedule at the start of `epoch` (the epochs before it run without training)."""
    from scan_fast.schedule.scan_epoch import ScanEpoch
    from scan_fast.schedule.seta import SeTa

    schedule = {"scan": lambda: Scan(N, prune_threshold=1.0), "infobatch": lambda: InfoBatch(N, 10),
                "scan-epoch": lambda: ScanEpoch(N, prune_threshold=1.0), "seta": lambda: SeTa(N, 10),
                "scan-epoch-or-none": lambda: ScanEpoch(N, prune_threshold=1.0, fallback="none", recent_look=True),
                "none": lambda: NoPruning(N)}[kind]()
    for e in range(epoch):
        kept = schedule.epoch_indices(e)
        if schedule.needs_losses(e):
            for start in range(0, len(kept) - BATCH + 1, BATCH):
                ids = kept[start:start + BATCH]
                schedule.observe(ids, torch.rand(BATCH).numpy(), torch.rand(BATCH).numpy())
        schedule.end_epoch(e, 1.0)
    return schedule


def _reads(kind, epoch, steps, log_every=10**6):
    torch.manual_seed(0)
    schedule = _schedule(kind, epoch)
    kept = schedule.epoch_indices(epoch)
    batches = [Batch(images=torch.randn(BATCH, 8), tokens=torch.randn(BATCH, 8),
                     ids=torch.from_numpy(kept[i * BATCH:(i + 1) * BATCH])) for i in range(steps)]
    model = TinyClip()
    step = _step(model, schedule, log_every)
    with count_host_reads() as reads:
        result = train_one_epoch(step, batches, epoch, steps, global_step=0)
    assert result.steps == steps
    return reads, schedule


@pytest.mark.parametrize("kind, epoch, phase", [("scan", 0, "warmup"), ("scan", 2, "preparation"),
                                                ("scan", 3, "mutation"), ("infobatch", 1, "pruning"),
                                                ("scan-epoch", 2, "preparation"), ("scan-epoch", 3, "mutation"),
                                                # the recent losses are observed in every epoch
                                                ("scan-epoch-or-none", 0, "warmup"),
                                                ("scan-epoch-or-none", 2, "preparation"),
                                                ("scan-epoch-or-none", 3, "mutation"),
                                                ("seta", 2, "pruning"),
                                                ("none", 0, "full")])
def test_no_host_reads_inside_the_epoch(kind, epoch, phase):
    short, schedule = _reads(kind, epoch, 3)
    assert schedule.phase_name(epoch) == phase
    long, _ = _reads(kind, epoch, 9)
    assert long.count == short.count, f"reads per step: {long.where} vs {short.where}"
    assert short.count <= 6, short.where  # the end-of-epoch check, loss sum and one flush


def test_log_steps_are_where_the_host_is_read():
    every_epoch, _ = _reads("scan", 2, 8)
    every_two, _ = _reads("scan", 2, 8, log_every=2)
    assert every_two.count > every_epoch.count  # four checks inside the epoch


def test_preparation_on_the_device_finds_the_host_paths_candidates():
    _, on_device = _reads("scan", 2, 9)
    on_device.end_epoch(2, 1.0)
    host = _schedule("scan", 2)
    kept = host.epoch_indices(2)
    torch.manual_seed(0)
    # the same model, data and steps, with the losses fed through observe() on the host
    batches = [(torch.randn(BATCH, 8), torch.randn(BATCH, 8), torch.from_numpy(kept[i * BATCH:(i + 1) * BATCH]))
               for i in range(9)]
    model = TinyClip()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    from scan_fast.train.loop import lr_at
    for i, (x, y, ids) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(2 + i / 9, 1e-3, 0.0, 10)
        loss_a, loss_b = model(x, y)
        loss = ((loss_a + loss_b) * 0.5).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        host.observe(ids.numpy(), loss_a.detach().numpy(), loss_b.detach().numpy())
    host.end_epoch(2, 1.0)
    assert (host.candidates() == on_device.candidates()).all() and len(host.candidates()) > 0


def test_a_non_finite_loss_is_found_at_the_next_check():
    schedule = _schedule("none", 0)
    kept = schedule.epoch_indices(0)
    batches = [Batch(images=torch.randn(BATCH, 8), tokens=torch.randn(BATCH, 8),
                     ids=torch.from_numpy(kept[i * BATCH:(i + 1) * BATCH])) for i in range(6)]
    batches[3] = Batch(images=batches[3].images * float("nan"), tokens=batches[3].tokens, ids=batches[3].ids)
    model = TinyClip()
    step = _step(model, schedule, 5)
    # batch 3 is the 4th step of the epoch and the 14th of the run; the check runs after the 15th (log_every 5)
    with pytest.raises(NonFiniteLoss, match=r"step 4 of the epoch \(global step 14; epochs count from 0, steps from "
                                            r"1\), found by the check after global step 15") as err:
        train_one_epoch(step, batches, 0, 6, global_step=10)
    assert err.value.step == 4 and err.value.global_step == 14 and err.value.checked_at == 15


def test_a_loader_that_reuses_its_id_buffer_is_read_right():
    """FFCV hands out the same id buffer for later batches: what the schedule keeps must be a copy."""
    torch.manual_seed(0)
    schedule = _schedule("infobatch", 0)
    kept = schedule.epoch_indices(0)
    buffer = torch.empty(BATCH, dtype=torch.int64)

    def reusing_loader():
        for i in range(6):
            buffer.copy_(torch.from_numpy(kept[i * BATCH:(i + 1) * BATCH]))
            yield Batch(images=torch.randn(BATCH, 8), tokens=torch.randn(BATCH, 8), ids=buffer)

    model = TinyClip()
    step = _step(model, schedule, 100)
    train_one_epoch(step, reusing_loader(), 0, 6, global_step=0)
    seen = torch.from_numpy(schedule.scores).isfinite()
    assert int(seen.sum()) == 6 * BATCH and bool(seen[torch.from_numpy(kept[:6 * BATCH])].all())
