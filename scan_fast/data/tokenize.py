"""Caption tokens for the CLIP .beton: open_clip's bundled BPE, stored as int32.

Same ids as `open_clip.tokenizer.SimpleTokenizer()(caption, context_length)`,
plus a flag saying whether the caption was cut to fit (the writers count them).
The vocabulary ships inside open_clip, so nothing is downloaded.
"""
import importlib.util
import os
import sys
from functools import lru_cache
from typing import Tuple

import numpy as np

DEFAULT_CONTEXT_LENGTH = 77


@lru_cache(maxsize=1)
def _simple_tokenizer():
    return _open_clip_tokenizer().SimpleTokenizer()


def _open_clip_tokenizer():
    """open_clip's tokenizer.py. `import open_clip.tokenizer` first runs open_clip's package
    __init__, which imports its models, timm and torchvision (about 4 CPU-seconds of every
    converting process's start-up); the tokenizer needs none of them, so its file is executed on
    its own (as importlib's documentation shows), unless open_clip is imported already."""
    if "open_clip.tokenizer" in sys.modules:
        return sys.modules["open_clip.tokenizer"]
    package = importlib.util.find_spec("open_clip")  # finds the package without running it
    path = os.path.join(package.submodule_search_locations[0], "tokenizer.py")
    spec = importlib.util.spec_from_file_location("scan_fast.data._open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vocab_size() -> int:
    """Token ids the tokenizer can give are in [0, vocab_size())."""
    return len(_simple_tokenizer().encoder)


class CaptionTokenizer:
    """Turns one caption into `context_length` int32 token ids.

    Long captions are truncated the way open_clip does (keep the first
    `context_length` ids, last one set to end-of-text). Repeated captions are
    served from a cache, which matters for generated datasets with a small
    caption vocabulary.
    """

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH, cache_size: int = 65536):
        if not isinstance(context_length, int) or context_length < 2:
            raise ValueError(f"context_length must be an int >= 2, got {context_length!r}")
        self.context_length = context_length
        self._bpe = _simple_tokenizer()
        self._cached = lru_cache(maxsize=cache_size)(self._tokenize)

    def __call__(self, caption: str) -> Tuple[np.ndarray, bool]:
        """Return (tokens int32[context_length], truncated). Empty captions raise ValueError."""
        if not isinstance(caption, str):
            raise TypeError(f"caption must be str, got {type(caption).__name__}")
        if not caption.strip():
            raise ValueError("caption is empty")
        tokens, truncated = self._cached(caption)
        return tokens.copy(), truncated

    def _tokenize(self, caption: str) -> Tuple[np.ndarray, bool]:
        ids = [self._bpe.sot_token_id, *self._bpe.encode(caption), self._bpe.eot_token_id]
        if len(ids) <= 2:
            # Text that cleans down to nothing (only spaces or control characters).
            raise ValueError("caption is empty after cleaning")
        truncated = len(ids) > self.context_length
        if truncated:
            ids = ids[: self.context_length]
            ids[-1] = self._bpe.eot_token_id
        out = np.zeros(self.context_length, dtype=np.int32)
        out[: len(ids)] = ids
        return out, truncated
