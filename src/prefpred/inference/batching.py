"""CPU side of the engine: rendering + tokenization, length-bucketed packing, padding, background prefetch.

Token ids of a label-token sequence are always ``prefix_ids + remainder_ids``: the style's shared prefix and
the rest of the rendered text are tokenized *separately*, in the cached and the uncached path alike. Tokenizing
the whole text at once could merge BPE tokens across the boundary, and then the cached prefix would not be the
same tokens as the uncached one; splitting makes both paths see identical token ids.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from prefpred.types import Pair

logger = logging.getLogger(__name__)


def _bos_prefix(tokenizer, text: str) -> list[int]:
    """``[bos_id]`` when the tokenizer adds a BOS token itself and ``text`` does not already start with it.

    Chat-templated text (the tokenizer has a chat template) writes its own special tokens: nothing is added.
    """
    bos = getattr(tokenizer, "bos_token", None)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos is None or bos_id is None or text.startswith(bos) or getattr(tokenizer, "chat_template", None):
        return []
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    without = tokenizer("x", add_special_tokens=False)["input_ids"]
    return [bos_id] if with_special[:1] == [bos_id] and with_special[1:] == without else []


def fit_length(ids: list[int], cap: int, protect: int = 0) -> list[int]:
    """Shorten ``ids`` to ``cap`` tokens by removing tokens from the middle of ``ids[protect:]``.

    The protected start (the shared prefix) and the end (where the question to the judge or the classifier's
    closing tokens sit) are kept. Only a safety net: prompt styles truncate the pair text themselves.
    """
    if len(ids) <= cap:
        return ids
    protect = min(protect, cap - 1) if cap > 1 else 0
    room = cap - protect
    head = room // 2
    tail = room - head
    body = ids[protect:]
    return ids[:protect] + body[:head] + (body[-tail:] if tail else [])


class Encoder:
    """Render pairs with a prompt style and turn them into token id lists (thread-safe for reading)."""

    def __init__(self, tokenizer, style, head: str, cap: int):
        self.tokenizer = tokenizer
        self.style = style
        self.head = head
        self.cap = cap
        self.prefix_text = ""
        self.prefix_ids: list[int] = []
        if head == "label-token":
            shared = getattr(style, "shared_prefix", None)
            self.prefix_text = shared(tokenizer) if shared is not None else ""
            bos = _bos_prefix(tokenizer, self.prefix_text)
            body = tokenizer(self.prefix_text, add_special_tokens=False)["input_ids"] if self.prefix_text else []
            self.prefix_ids = bos + list(body)

    def render(self, pairs: Sequence[Pair]) -> list[str]:
        return [self.style.render(p, self.tokenizer, max_tokens=self.cap) for p in pairs]

    def encode(self, pairs: Sequence[Pair]) -> tuple[list[np.ndarray], int]:
        """Token ids of each pair as int32 arrays (and the number the engine had to shorten)."""
        texts = self.render(pairs)
        if not texts:
            return [], 0
        if self.head == "classifier":
            # a chat-templated text already holds its special tokens; plain text gets the tokenizer's own
            special = not getattr(self.tokenizer, "chat_template", None)
            ids = [list(x) for x in self.tokenizer(texts, add_special_tokens=special)["input_ids"]]
            protect = 0
        else:
            n = len(self.prefix_text)
            for p, t in zip(pairs, texts, strict=True):
                if not t.startswith(self.prefix_text):
                    raise ValueError(f"prompt style {getattr(self.style, 'name', self.style)!r}: the rendering "
                                     f"of pair {p.id} does not start with its shared_prefix()")
            rest = self.tokenizer([t[n:] for t in texts], add_special_tokens=False)["input_ids"]
            ids = [self.prefix_ids + list(r) for r in rest]
            protect = len(self.prefix_ids)
        out, cut = [], 0
        for x in ids:
            if len(x) > self.cap:
                cut += 1
                x = fit_length(x, self.cap, protect)
            out.append(np.asarray(x, dtype=np.int32))
        return out, cut


@dataclass
class Batch:
    """One collated batch on the CPU (pinned when the model is on CUDA)."""

    index: np.ndarray
    """Sequence indices (into the engine's sequence list) of the rows."""
    input_ids: object
    attention_mask: object
    position_ids: object | None
    real_tokens: int
    padded_tokens: int


def pack_batches(lengths: Sequence[int], token_budget: int, max_batch_size: int, *, bucket: bool = True,
                 fixed_batch_size: int | None = None, batch_cost: int | None = None) -> list[list[int]]:
    """Group sequence positions into batches.

    ``bucket=True``: sort by length (longest first, ties in input order), then cut the sorted list into
    consecutive batches that minimise ``padded tokens + batch_cost x number of batches`` (dynamic
    programming, O(n x max_batch_size)) under ``batch size x longest <= token_budget`` and
    ``batch size <= max_batch_size``. ``batch_cost`` (default ``token_budget // 32``) is the fixed price of one
    forward pass in tokens: 0 would give every length its own batch, a large value fills every batch to the
    budget. A sequence longer than the budget gets a batch of its own (it is never dropped).
    ``bucket=False``: consecutive batches of ``fixed_batch_size`` in input order.
    """
    n = len(lengths)
    if not bucket:
        size = fixed_batch_size or max_batch_size
        return [list(range(i, min(i + size, n))) for i in range(0, n, size)]
    order = sorted(range(n), key=lambda i: (-lengths[i], i))
    sl = [max(1, lengths[i]) for i in order]
    cost = token_budget // 32 if batch_cost is None else batch_cost
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest packing of the first j sorted sequences
    start = [0] * (n + 1)
    for i in range(n):  # a batch starting at i (its longest is sl[i]) and ending before j
        base = best[i] + cost
        longest = sl[i]
        limit = min(n, i + max(1, min(max_batch_size, token_budget // longest)))
        for j in range(i + 1, limit + 1):
            c = base + (j - i) * longest
            if c < best[j]:
                best[j], start[j] = c, i
    batches: list[list[int]] = []
    j = n
    while j > 0:
        i = start[j]
        batches.append(order[i:j])
        j = i
    return batches[::-1]


def collate(seqs: Sequence[np.ndarray], index: np.ndarray, *, pad_id: int, left: bool, prefix_len: int = 0,
            pin: bool = False) -> Batch:
    """Pad token id lists into tensors.

    ``left=True`` (causal LMs): left padding, explicit ``position_ids`` counting real tokens only, so a padded
    sequence sees exactly the positions it would see alone and its last real token is at column -1. With
    ``prefix_len > 0`` the first ``prefix_len`` ids (the cached shared prefix) are cut off, positions start at
    ``prefix_len`` and the attention mask gets ``prefix_len`` leading ones for the cached keys.
    ``left=False`` (classifiers): right padding, no position ids (the model's defaults are right).
    """
    import torch

    body = [s[prefix_len:] for s in seqs]
    width = max(1, max((len(s) for s in body), default=1))
    b = len(body)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for r, s in enumerate(body):
        if len(s) == 0:
            continue
        t = torch.as_tensor(s).long()
        if left:
            ids[r, width - len(s):] = t
            mask[r, width - len(s):] = 1
        else:
            ids[r, :len(s)] = t
            mask[r, :len(s)] = 1
    pos = None
    if left:
        pos = (mask.cumsum(1) - 1).clamp(min=0) + prefix_len
        if prefix_len:
            mask = torch.cat([torch.ones((b, prefix_len), dtype=torch.long), mask], dim=1)
    if pin:
        ids, mask = ids.pin_memory(), mask.pin_memory()
        pos = pos.pin_memory() if pos is not None else None
    real = sum(len(s) for s in seqs)
    return Batch(index=index, input_ids=ids, attention_mask=mask, position_ids=pos, real_tokens=real,
                 padded_tokens=b * (max(len(s) for s in seqs) if seqs else 0))


def encode_in_background(encoder: Encoder, pairs: Sequence[Pair], *, num_workers: int, chunk: int = 64,
                         ahead: int | None = None) -> Iterator[tuple[list[np.ndarray], int]]:
    """Yield ``encoder.encode`` of consecutive chunks of ``pairs``, computed ahead by a thread pool.

    At most ``ahead`` chunks (default ``4 x num_workers``) are in flight or waiting, which bounds the memory
    held by token ids that the model has not consumed yet. Fast tokenizers are called from several threads
    only with ``num_workers > 1``; the engine never changes their truncation/padding settings meanwhile.
    """
    starts = range(0, len(pairs), chunk)
    if num_workers <= 0:
        for i in starts:
            yield encoder.encode(pairs[i:i + chunk])
        return
    ahead = max(1, ahead or 4 * num_workers)
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="prefpred-tok") as pool:
        todo = iter(starts)
        inflight: deque = deque()
        try:
            for i in itertools.islice(todo, ahead):
                inflight.append(pool.submit(encoder.encode, pairs[i:i + chunk]))
            while inflight:
                result = inflight.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    inflight.append(pool.submit(encoder.encode, pairs[nxt:nxt + chunk]))
                yield result
        finally:
            for f in inflight:
                f.cancel()


_END = object()


class Prefetcher:
    """Run an iterator in a background thread, ``size`` items ahead; re-raise its errors in the consumer."""

    def __init__(self, it: Iterable, size: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, size))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(it),), daemon=True, name="prefpred-batches")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it: Iterator) -> None:
        try:
            for item in it:
                if not self._put((True, item)):
                    return
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            self._put((False, e))
            return
        self._put((True, _END))

    def __iter__(self):
        try:
            while True:
                ok, item = self._q.get()
                if not ok:
                    raise item
                if item is _END:
                    return
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
