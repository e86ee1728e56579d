"""`scan-fast coreset export`: the coreset of a SCAN checkpoint, as ids, webdataset keys or DataComp uids."""
import os
from dataclasses import dataclass, fields
from typing import Literal, Optional

from scan_fast.flags import check_choices, flag
from scan_fast.train.config import PRUNE_MODES, TrainConfig


@dataclass
class CoresetExport:
    """`scan-fast coreset export`'s arguments (export_coreset's)."""
    checkpoint: str = flag(None, "a SCAN run's checkpoint (e.g. runs/NAME/checkpoints/latest.pt)", "export",
                           positional=True)
    out: str = flag(None, "file to write", "export", required=True)
    format: Literal["ids", "keys", "datacomp"] = flag(
        "ids", "ids: the global sample ids, one a line; keys: the webdataset keys, one a line, under a "
               "'# scan-fast keys' line; datacomp: the uids as a sorted .npy of dtype u8,u8 (high, low 64 bits), "
               "what DataComp's resharder reads", "export")
    data: Optional[str] = flag(None, "the training data set whose keys or uids to write (default: the checkpoint's "
                                     "--train-data)", "export")
    overwrite: bool = flag(False, "replace --out if it exists", "export")

    def __post_init__(self):
        check_choices(self)

    def run(self) -> int:
        return export_coreset(self.checkpoint, self.out, overwrite=self.overwrite, fmt=self.format, data=self.data)


def export_coreset(checkpoint: str, out: str, overwrite: bool = True, fmt: str = "ids", data=None) -> int:
    """Write the coreset of a SCAN checkpoint as `fmt` (ids, keys, datacomp); returns how many
    samples were written."""
    import numpy as np

    from scan_fast.outputs import check_output, partial_path
    from scan_fast.train.checkpoint import load_checkpoint

    check_output(out, inputs=[checkpoint], overwrite=overwrite)
    state = load_checkpoint(checkpoint)
    schedule_state = state["schedule"]
    prune = state["config"].get("prune")
    mode = PRUNE_MODES.get(prune)  # a state without "kind" is taken for Scan's, as before schedules named it
    if mode is None or mode.coreset_state is None or schedule_state.get("kind", "Scan") != mode.coreset_state:
        raise ValueError(f"{checkpoint} is from a --prune {prune} run, not a SCAN run")
    # the schedule as the run built it (scan-epoch's coreset is Scan's, from the same two bitsets)
    saved = {f.name: state["config"][f.name] for f in fields(TrainConfig) if f.name in state["config"]}
    scan = mode.build(TrainConfig(**saved), int(schedule_state["num_samples"]), 0,
                      int(schedule_state.get("world_size", 1)))
    scan.load_state_dict(schedule_state)
    if not any(record.phase == "preparation" for record in scan.stats().records):
        raise ValueError(f"{checkpoint}: the run has not completed a preparation epoch (it holds "
                         f"{len(scan.stats().records)} epoch(s), all warm-up), so SCAN has chosen no candidates "
                         f"and its coreset would be every id; export from a checkpoint after a preparation epoch")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if fmt != "ids":
        from scan_fast.data.dataset import open_dataset
        from scan_fast.data.source_ids import export_kept, kept_bits

        data = data or state["config"].get("train_data")
        dataset = open_dataset(data, progress=False)
        if dataset.num_samples != scan.num_samples:
            raise ValueError(f"{data} holds {dataset.num_samples} samples, the run in {checkpoint} trained on "
                             f"{scan.num_samples}: not its training data (--data)")
        return export_kept(dataset, kept_bits(scan.coreset_set()), fmt, out)
    ids = scan.coreset()
    partial = partial_path(out)
    np.savetxt(partial, ids, fmt="%d", header=f"coreset of {checkpoint}: {len(ids)} of {scan.num_samples} ids")
    os.replace(partial, out)
    return len(ids)
