"""`Batch`: what every loader of scan_fast.data yields, one batch of named tensors.

The loaders' pipelines name their outputs after the stored fields (`id`, `image`, `tokens`,
`label`) plus MoCo's second view (`view2`); a batch carries each under its field name below,
whatever order ffcv produced them in. Fields a loader does not read are None.
"""
from dataclasses import dataclass, fields
from typing import Dict, Optional

import torch

# a pipeline's output name -> the Batch field that carries it
OUTPUT_FIELDS = {"id": "ids", "image": "images", "tokens": "tokens", "view2": "view2", "label": "labels"}


@dataclass(frozen=True, eq=False)
class Batch:
    """One loader batch: the global sample ids and the inputs read with them.

    ids: int64 (B,), the global sample ids (on the CPU), what a pruning schedule observes;
    images: (B, 3, R, R), float and normalised (MoCo's augmented first view, or centre crops
    without augmentation), or uint8 before MoCo's photometric half runs; tokens: int32 (B,
    context) (CLIP); view2: MoCo's second augmented view of the same images; labels: int64 (B,)
    (labelled sets). As with any ffcv loader the tensors live in buffers reused a few batches
    later: copy what must outlive the step.
    """
    ids: torch.Tensor
    images: Optional[torch.Tensor] = None
    tokens: Optional[torch.Tensor] = None
    view2: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None

    @classmethod
    def from_outputs(cls, names, outputs) -> "Batch":
        """The batch of a loader whose pipelines `names` (output names, see OUTPUT_FIELDS) gave `outputs`."""
        return cls(**{OUTPUT_FIELDS[name]: value for name, value in zip(names, outputs)})

    def as_dict(self) -> Dict[str, torch.Tensor]:
        """The fields this batch holds (not None), by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
