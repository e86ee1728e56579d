"""Caption tokens for the CLIP .beton: open_clip's bundled BPE, stored as int32.

Same ids as `open_clip.tokenizer.SimpleTokenizer()(caption, context_length)`,
plus a flag saying whether the caption was cut to fit (the writers count them).
The vocabulary ships inside open_clip, so nothing is downloaded.
"""
import builtins
import importlib.util
import os
import sys
import types
from functools import lru_cache
from typing import Dict, List, Tuple

import numpy as np

DEFAULT_CONTEXT_LENGTH = 77
# Characters of a caption that open_clip's cleaning (ftfy.fix_text, HTML unescaping, whitespace
# collapsing) leaves as they are, but for the whitespace: printable ASCII but '&' (which may start an
# HTML entity), and tab, newline and carriage return (whitespace, collapsed either way).
_PLAIN = frozenset(map(chr, range(0x20, 0x7F))) - {"&"} | {"\t", "\n", "\r"}
_WORD_CACHE = 1 << 18  # words whose ids are kept (the cache starts again when full)


@lru_cache(maxsize=1)
def _simple_tokenizer():
    module = _open_clip_tokenizer()
    made = getattr(module, "_tokenizer", None)  # the file makes a default one as it loads: a quarter second
    return made if type(made) is module.SimpleTokenizer else module.SimpleTokenizer()


def _open_clip_tokenizer():
    """open_clip's tokenizer.py. `import open_clip.tokenizer` first runs open_clip's package
    __init__, which imports its models, timm and torchvision (about 4 CPU-seconds of every
    converting process's start-up); the tokenizer needs none of them, so its file is executed on
    its own (as importlib's documentation shows), unless open_clip is imported already. Its
    `import torch` (2 s more) serves only its batch helpers, which return tensors and which we do
    not call: unless torch is loaded already, the file gets a stand-in for it (_NoTorch)."""
    if "open_clip.tokenizer" in sys.modules:
        return sys.modules["open_clip.tokenizer"]
    package = importlib.util.find_spec("open_clip")  # finds the package without running it
    path = os.path.join(package.submodule_search_locations[0], "tokenizer.py")
    spec = importlib.util.spec_from_file_location("scan_fast.data._open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    if "torch" not in sys.modules:
        module.__dict__["__builtins__"] = {**builtins.__dict__, "__import__": _import_without_torch}
    spec.loader.exec_module(module)
    return module


class _NoTorch(types.ModuleType):
    """What open_clip's tokenizer file sees as torch: its annotations name torch types, which this
    gives; using one (its batch helpers) raises."""

    def __getattr__(self, name):
        def unavailable(*args, **kwargs):
            raise RuntimeError(f"torch.{name} is not loaded for scan-fast's tokenizer: use CaptionTokenizer")
        return unavailable


def _import_without_torch(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and (name == "torch" or name.startswith("torch.")):
        return _NoTorch("torch")
    return builtins.__import__(name, globals, locals, fromlist, level)


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
        self._word_ids: Dict[str, List[int]] = {}  # BPE ids of each word seen in a plain caption

    def __call__(self, caption: str) -> Tuple[np.ndarray, bool]:
        """Return (tokens int32[context_length], truncated). Empty captions raise ValueError."""
        if not isinstance(caption, str):
            raise TypeError(f"caption must be str, got {type(caption).__name__}")
        if not caption.strip():
            raise ValueError("caption is empty")
        tokens, truncated = self._cached(caption)
        return tokens.copy(), truncated

    def _encode(self, caption: str) -> List[int]:
        """open_clip's SimpleTokenizer.encode(caption). A plain caption (_PLAIN characters only, most
        captions of web data sets) skips the cleaning that leaves it as it is and looks its words
        up in a cache: about six times faster, with the same ids (tests compare the two)."""
        if not _PLAIN.issuperset(caption):
            return self._bpe.encode(caption)
        ids: List[int] = []
        # Printable ASCII maps to itself in open_clip's byte encoder, so a word is its own BPE input.
        for word in self._bpe.pat.findall(" ".join(caption.split()).lower()):
            word_ids = self._word_ids.get(word)
            if word_ids is None:
                if len(self._word_ids) >= _WORD_CACHE:
                    self._word_ids.clear()
                word_ids = self._word_ids[word] = [self._bpe.encoder[t] for t in self._bpe.bpe(word).split(" ")]
            ids += word_ids
        return ids

    def _tokenize(self, caption: str) -> Tuple[np.ndarray, bool]:
        ids = [self._bpe.sot_token_id, *self._encode(caption), self._bpe.eot_token_id]
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
