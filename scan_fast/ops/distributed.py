"""All-gather helpers for the distributed contrastive losses.

`gather_features` follows open_clip's function of the same name (same arguments,
same gradient semantics); `concat_all_gather` is MoCo v3's gradient-free gather.
"""
from typing import Tuple

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every rank along dim 0; no gradient flows back (MoCo v3)."""
    if not is_distributed():
        return tensor.detach()
    with torch.no_grad():
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every rank; the backward sums each rank's gradient into its owner."""
    import torch.distributed.nn  # registers the autograd-aware collectives

    return torch.cat(torch.distributed.nn.all_gather(tensor.contiguous()), dim=0)


def _horovod():
    try:
        import horovod.torch as hvd
    except ImportError as error:
        raise ImportError("use_horovod=True needs horovod (pip install horovod)") from error
    return hvd


def gather_features(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    local_loss: bool = False,
    gather_with_grad: bool = False,
    rank: int = 0,
    world_size: int = 1,
    use_horovod: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Features of all ranks, concatenated in rank order, exactly as open_clip gathers them.

    Without `gather_with_grad`, other ranks' features carry no gradient; unless
    `local_loss`, this rank's own slice is replaced by the local tensors so that
    its gradient still flows.
    """
    if use_horovod:
        hvd = _horovod()
        if gather_with_grad:
            return hvd.allgather(image_features), hvd.allgather(text_features)
        with torch.no_grad():
            gathered = [hvd.allgather(image_features), hvd.allgather(text_features)]
        gathered = [list(g.chunk(world_size, dim=0)) for g in gathered]
    elif gather_with_grad:
        return all_gather_with_grad(image_features), all_gather_with_grad(text_features)
    else:
        gathered = []
        for features in (image_features, text_features):
            parts = [torch.empty_like(features) for _ in range(world_size)]
            dist.all_gather(parts, features.contiguous())
            gathered.append(parts)
    if not local_loss:
        # keep the gradient of this rank's own features
        gathered[0][rank] = image_features
        gathered[1][rank] = text_features
    return torch.cat(gathered[0], dim=0), torch.cat(gathered[1], dim=0)


def all_reduce_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over every rank; the backward sums the ranks' gradients the same way."""
    import torch.distributed.nn  # registers the autograd-aware collectives

    return torch.distributed.nn.all_reduce(tensor)
