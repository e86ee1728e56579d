"""Image decoders that never pass a damaged image on, and whose randomness is keyed, not drawn.

`KeyedRandomResizedCropDecoder` decodes like ffcv's
RandomResizedCropRGBImageDecoder (JPEG or raw, crop and resize straight from
the stored image, one compiled parallel loop over the batch), but takes every
crop and flip decision from `keyed_random` by (seed, epoch, sample id, view).
The loader writes (seed, epoch) into the decoder's key cell before each epoch
starts; the compiled code reads the cell through its address, because numba
freezes the contents of arrays it sees at compile time.

`CheckedCenterCropDecoder` is ffcv's CenterCropRGBImageDecoder (evaluation) with the
same check. ffcv's decoders ignore what the JPEG decode returns, so a damaged JPEG
leaves the scratch buffer holding the image decoded there before: another sample's
pixels, silently. These decoders mark the batch position of every image that fails
to decode in a failure array the loader gives them (`set_failure_sink`), blank its
output, and the loader stops the epoch with one line naming the sample id and its
file (loaders.py; docs/data-formats.md, "Damaged images").
"""
from dataclasses import replace
from typing import Callable, Tuple

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, SimpleRGBImageDecoder, get_center_crop
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.state import State
from llvmlite import ir
from numba import carray, types
from numba.extending import intrinsic

from .keyed_random import CROP_DRAWS, FLIP_DRAW, keyed_uniform, sample_key


@intrinsic
def _uint64_pointer(typingctx, address):
    """An integer address as a uint64* (so compiled code reads the cell's current value)."""
    signature = types.CPointer(types.uint64)(address)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

    return signature, codegen


def keyed_crop(key, height, width, scale, log_ratio):
    """torchvision's RandomResizedCrop.get_params with keyed uniforms: up to 10 tries, then centre."""
    area = height * width
    for attempt in range(10):
        first = CROP_DRAWS + 4 * attempt
        target_area = area * (scale[0] + (scale[1] - scale[0]) * keyed_uniform(key, first))
        aspect = np.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * keyed_uniform(key, first + 1))
        w = int(round(np.sqrt(target_area * aspect)))
        h = int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(keyed_uniform(key, first + 2) * (height - h + 1))
            j = int(keyed_uniform(key, first + 3) * (width - w + 1))
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < np.exp(log_ratio[0]):
        w, h = width, int(round(width / np.exp(log_ratio[0])))
    elif in_ratio > np.exp(log_ratio[1]):
        h, w = height, int(round(height * np.exp(log_ratio[1])))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _mirror_columns(image):
    """Flip an (H, W, C) array left-right in place."""
    width = image.shape[1]
    for column in range(width // 2):
        for row in range(image.shape[0]):
            for channel in range(image.shape[2]):
                left = image[row, column, channel]
                image[row, column, channel] = image[row, width - 1 - column, channel]
                image[row, width - 1 - column, channel] = left


class _CheckedDecoder(SimpleRGBImageDecoder):
    """Decode (JPEG or raw) and resize a crop to `output_size`, one compiled parallel loop over the
    batch; a JPEG that fails to decode sets its position in the failure sink and gives a black image.
    Subclasses choose the crop (`_crop_code`) and may flip (`_flip_code`)."""

    def __init__(self, output_size: Tuple[int, int]):
        super().__init__()
        self.output_size = tuple(output_size)
        self.id_source = None  # the batch's sample ids, when the loader decodes staged rows
        self.failure_sink = None  # 1 at the batch position of each image that did not decode

    def set_id_source(self, ids: np.ndarray) -> None:
        """Key crops by `ids[position in batch]` (a uint64 array the loader fills before each batch)
        instead of the row index ffcv passes: a staged batch's rows are 0..B-1, not sample ids.
        Call before the pipeline is compiled."""
        if ids.dtype != np.uint64 or not ids.flags.c_contiguous:
            raise TypeError("the id source must be a contiguous uint64 array")
        self.id_source = ids

    def set_failure_sink(self, failed: np.ndarray) -> None:
        """Where to mark images that do not decode: failed[position in batch] = 1 (a contiguous uint8
        array of at least the batch size that the loader clears before each batch and reads after).
        Call before the pipeline is compiled; without one a damaged image is only blanked."""
        if failed.dtype != np.uint8 or not failed.flags.c_contiguous:
            raise TypeError("the failure sink must be a contiguous uint8 array")
        self.failure_sink = failed

    def declare_state_and_memory(self, previous_state: State):
        # One output image per sample, and a scratch buffer for a full decoded image.
        largest = np.uint64(self.metadata["width"].max()) * np.uint64(self.metadata["height"].max())
        shape = (*self.output_size, 3)
        return (replace(previous_state, jit_mode=True, shape=shape, dtype=np.dtype("<u1")),
                (AllocationQuery(shape, np.dtype("<u1")), AllocationQuery((largest * np.uint64(3),), np.dtype("<u1"))))

    def _crop_code(self):
        """(compiled crop(key, height, width) -> (i, j, h, w), whether it uses the key)."""
        raise NotImplementedError

    def _flip_code(self):
        """A compiled flip(key, image) applied after the resize (a no-op by default)."""
        def no_flip(key, image):
            return None
        return Compiler.compile(no_flip)

    def generate_code(self) -> Callable:
        jpg = IMAGE_MODES["jpg"]
        mem_read, parallel_range = self.memory_read, Compiler.get_iterator()
        imdecode_c, resize_crop_c = Compiler.compile(imdecode), Compiler.compile(resize_crop)
        crop_c, flip_c = self._crop_code(), self._flip_code()
        view, cell_address = getattr(self, "view", 0), self.key_cell.ctypes.data
        staged = self.id_source is not None
        ids_address = self.id_source.ctypes.data if staged else 0
        ids_length = len(self.id_source) if staged else 0
        sink = self.failure_sink if self.failure_sink is not None else np.zeros(0, np.uint8)
        sink_address, sink_length = sink.ctypes.data, len(sink)

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, scratch = my_storage
            cell = carray(_uint64_pointer(cell_address), (2,))
            seed, epoch = cell[0], cell[1]
            ids = carray(_uint64_pointer(ids_address), (ids_length,))
            for dst_ix in parallel_range(len(batch_indices)):
                row = batch_indices[dst_ix]
                sample_id = ids[dst_ix] if staged else row
                field = metadata[row]
                data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                if field["mode"] == jpg:
                    image = scratch[dst_ix]
                    status = imdecode_c(data, image, height, width, height, width, 0, 0, 1, 1, False, False)
                    if status != 0:  # damaged: never another sample's pixels left in the scratch buffer
                        if dst_ix < sink_length:
                            _mark_failed(sink_address + dst_ix)
                        destination[dst_ix][:] = 0
                        continue
                    image = image.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                else:
                    image = data.reshape(height, width, 3)
                key = sample_key(seed, epoch, sample_id, view)
                i, j, h, w = crop_c(key, height, width)
                resize_crop_c(image, i, i + h, j, j + w, destination[dst_ix])
                flip_c(key, destination[dst_ix])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


@intrinsic
def _mark_failed(typingctx, address):
    """Store 1 in the byte at an integer address (the failure sink's entry the loader reads after each batch).
    A store through the address, not an array view of it: numba may type such a view as read-only."""
    signature = types.void(address)

    def codegen(context, builder, sig, args):
        byte = ir.IntType(8)
        builder.store(ir.Constant(byte, 1), builder.inttoptr(args[0], byte.as_pointer()))

    return signature, codegen


class KeyedRandomResizedCropDecoder(_CheckedDecoder):
    """Decode, random-resized-crop to `output_size` and flip with probability `flip_prob`,
    every decision a function of (seed, epoch, sample id, view). `view` tells apart two
    views decoded from one stored image (MoCo)."""

    def __init__(self, output_size: Tuple[int, int], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 flip_prob: float = 0.0, view: int = 0):
        super().__init__(output_size)
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"crop ratio must satisfy 0 < low <= high, got {ratio}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.flip_prob, self.view = float(flip_prob), int(view)
        self.key_cell = np.zeros(2, np.uint64)  # (seed, epoch), read by the compiled code

    def set_key(self, seed: int, epoch: int) -> None:
        """Key the crops of the epoch about to be read (called by the loader before it starts)."""
        self.key_cell[0], self.key_cell[1] = seed, epoch

    def _crop_code(self):
        keyed_crop_c = Compiler.compile(keyed_crop)
        scale, log_ratio = np.array(self.scale), np.log(np.array(self.ratio))

        def crop(key, height, width):
            return keyed_crop_c(key, height, width, scale, log_ratio)
        return Compiler.compile(crop)

    def _flip_code(self):
        mirror_c, flip_prob = Compiler.compile(_mirror_columns), self.flip_prob

        def flip(key, image):
            if keyed_uniform(key, FLIP_DRAW) < flip_prob:
                mirror_c(image)
        return Compiler.compile(flip)


class CheckedCenterCropDecoder(_CheckedDecoder):
    """ffcv's CenterCropRGBImageDecoder (the centre crop of `ratio` x the shorter side, resized to
    `output_size`; evaluation and augment=False) with the decode check of `_CheckedDecoder`."""

    def __init__(self, output_size: Tuple[int, int], ratio: float = 1.0):
        super().__init__(output_size)
        self.ratio = float(ratio)
        self.key_cell = np.zeros(2, np.uint64)  # unused: the centre crop draws nothing

    def _crop_code(self):
        centre_c, ratio = Compiler.compile(get_center_crop), self.ratio

        def crop(key, height, width):
            return centre_c(height, width, 0, ratio)
        return Compiler.compile(crop)
