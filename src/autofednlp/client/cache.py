"""Exact activation cache: a client's frozen-layer outputs, kept so later passes skip them.

Between two configuration changes a client passes over the same samples again and again, and
the frozen layers below the boundary (run by `EncoderClassifier.frozen_forward` with dropout
off) give the same output each time. So the hidden states entering the boundary layer are
stored per (boundary, sample id) and fed back as `boundary_hidden`. fp32 storage is exact (up to
the float rounding of a different batch width, ~1e-7); fp16 halves memory and disk but is not
(relative error ~1e-3). Each sample is stored trimmed to its real length and zero-padded back on
retrieval: padding is masked out of attention and pooling, so its values do not matter.

Disk layout, `directory/<sha256(namespace, dtype)[:32]>/b<boundary>/<time>-<pid>-<rand>.pt`: one
segment per `hidden_for` call that had misses, holding those entries as three tensors (ids,
lengths, rows concatenated). Segments are written through, atomically (tmp + os.replace), when
computed, because Flower's deployment engine starts a fresh client process every round and a
process may end at any time; memory is a bounded LRU over them, and spilling an entry is
dropping its in-memory copy. One file per batch keeps a client with thousands of samples at tens
of files; a new process rebuilds the index from each segment's small ids/lengths tensors
(memory-mapped loads), so there is no separate index file to go stale. A folder per boundary
makes dropping one an `rmtree`. A segment that cannot be read (truncated, not a tensor file,
inconsistent) counts as missing and is deleted; bit flips inside an intact file are not
detected. Namespaces live in separate folders, so processes sharing `directory` never touch each
other's files; one namespace is used by one process (and one thread) at a time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from autofednlp.data.tokenize import trim_batch
from autofednlp.model.classifier import EncoderClassifier

Key = tuple[int, int]  # (boundary, sample id)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class ActivationCache:
    """Hidden states entering a boundary layer, per sample, for one backbone + tokenization.

    `namespace` must change whenever the frozen layers' output for a sample id could change
    (backbone weights, tokenization, data split, client); entries of another namespace are
    never returned. In memory, entries are kept up to `memory_budget_bytes` (least recently
    used dropped first); with `directory` every entry also lives on disk, otherwise a dropped
    entry is recomputed (and counted as a miss) when next needed.
    """

    def __init__(
        self,
        namespace: str,
        directory: str | Path | None = None,
        memory_budget_bytes: int = 256 * 2**20,
        dtype: torch.dtype = torch.float32,
        lookahead: int = 0,
        lowest_boundary: int = 0,
    ) -> None:
        if memory_budget_bytes < 0:
            raise ValueError(f"memory_budget_bytes = {memory_budget_bytes}: must be >= 0")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype = {dtype}: expected torch.float32, float16 or bfloat16")
        if lookahead < 0:
            raise ValueError(f"lookahead = {lookahead}: must be >= 0")
        self.namespace = namespace
        self.lookahead = lookahead
        self.lowest_boundary = lowest_boundary
        self.memory_budget_bytes = memory_budget_bytes
        self.dtype = dtype
        self.hits = 0
        self.misses = 0
        self._mem: OrderedDict[Key, torch.Tensor] = OrderedDict()
        self._mem_bytes = 0
        self._index: dict[Key, tuple[Path, int, int]] = {}  # -> (segment, first row, length)
        self._dir: Path | None = None
        if directory is not None:
            # the storage dtype is part of the key: fp16 entries must not serve an fp32 cache
            digest = hashlib.sha256(f"{namespace}\0{dtype}".encode()).hexdigest()[:32]
            self._dir = Path(directory) / digest
            self._dir.mkdir(parents=True, exist_ok=True)
            self._scan()

    def hidden_for(
        self,
        model: EncoderClassifier,
        boundary: int,
        sample_ids: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lookahead: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Float32 hidden states [B, T, H] entering layer `boundary` for a right-padded batch
        (T = its width, rows zero beyond each sample's length), and how many samples were not
        cached. Those are computed in one frozen pass on just their rows and stored.

        `lookahead`: lower boundaries to store on the way for those rows (default: the
        cache's `lookahead` boundaries just below `boundary`, none under `lowest_boundary`).
        The pass up to `boundary` goes through them anyway, so they cost no computation, only
        space; a later configuration that trains more layers (AutoFedNLP's growth) then finds
        them cached instead of running the frozen layers again."""
        _check_frozen(model, boundary)
        if lookahead is None:
            lookahead = range(max(self.lowest_boundary, boundary - self.lookahead), boundary)
        lookahead = sorted({b for b in lookahead if 0 <= b < boundary})
        lengths = attention_mask.sum(1)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        if not torch.equal(attention_mask.bool(), positions[None, :] < lengths[:, None]):
            raise ValueError("attention_mask is not right-padded: the cache stores prefixes")
        ids, lens = sample_ids.tolist(), lengths.tolist()
        found: dict[int, torch.Tensor] = {}
        on_disk: list[int] = []
        for row, (sid, n) in enumerate(zip(ids, lens)):
            t = self._mem.get((boundary, sid))
            if t is not None and t.shape[0] == n:
                self._mem.move_to_end((boundary, sid))
                found[row] = t
            elif (boundary, sid) in self._index and self._index[(boundary, sid)][2] == n:
                on_disk.append(row)
        found.update(self._read(boundary, {row: ids[row] for row in on_disk}))
        for row in on_disk:
            if row in found:
                self._remember((boundary, ids[row]), found[row])
        missing = [row for row in range(len(ids)) if row not in found]
        if missing:
            rows = torch.tensor(missing, device=input_ids.device)
            sub_ids, sub_mask = trim_batch(input_ids[rows], attention_mask[rows])
            with torch.no_grad():
                states = model.frozen_states(sub_ids, sub_mask, [*lookahead, boundary])
            for b, hidden in states.items():
                # only samples this boundary lacks (a lower one may hold them from before)
                rows = [
                    (j, r)
                    for j, r in enumerate(missing)
                    if b == boundary or not self._has(b, ids[r], lens[r])
                ]
                if not rows:
                    continue
                # clone: a view would keep the whole batch tensor alive behind each entry
                new = [hidden[j, : lens[r]].to("cpu", self.dtype).clone() for j, r in rows]
                if self._dir is not None:
                    self._write(b, [ids[r] for _, r in rows], new)
                for (_, r), t in zip(rows, new):
                    if b == boundary:
                        found[r] = t
                    self._remember((b, ids[r]), t)
        self._evict()
        self.hits += len(ids) - len(missing)
        self.misses += len(missing)
        width = model.encoder.config.hidden_size
        out = torch.zeros(len(ids), input_ids.shape[1], width, dtype=torch.float32)
        for row, t in found.items():
            out[row, : t.shape[0]] = t
        return out.to(input_ids.device), len(missing)

    def _has(self, boundary: int, sid: int, n: int) -> bool:
        t = self._mem.get((boundary, sid))
        if t is not None:
            return t.shape[0] == n
        entry = self._index.get((boundary, sid))
        return entry is not None and entry[2] == n

    def drop_boundaries_except(self, boundaries: set[int]) -> None:
        """Forget (memory and disk) every boundary not in `boundaries`: once depth grows past a
        boundary its entries are never asked for again."""
        for key in [k for k in self._mem if k[0] not in boundaries]:
            self._mem_bytes -= _nbytes(self._mem.pop(key))
        self._index = {k: v for k, v in self._index.items() if k[0] in boundaries}
        if self._dir is not None:
            for sub in self._dir.glob("b*"):
                b = _boundary_of(sub)
                if b is not None and b not in boundaries:
                    shutil.rmtree(sub, ignore_errors=True)

    def clear(self) -> None:
        """Remove every entry of this namespace, in memory and on disk."""
        self._mem.clear()
        self._mem_bytes = 0
        self._index.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir.mkdir(parents=True, exist_ok=True)

    def stats(self) -> dict[str, Any]:
        """Counters and sizes: hits, misses, entries_in_memory, bytes_in_memory,
        entries_on_disk, bytes_on_disk, boundaries (sorted)."""
        disk = 0
        if self._dir is not None:
            disk = sum(p.stat().st_size for p in self._dir.glob("b*/*.pt") if p.is_file())
        return {
            "hits": self.hits,
            "misses": self.misses,
            "entries_in_memory": len(self._mem),
            "bytes_in_memory": self._mem_bytes,
            "entries_on_disk": len(self._index),
            "bytes_on_disk": disk,
            "boundaries": sorted({k[0] for k in self._mem} | {k[0] for k in self._index}),
        }

    def _remember(self, key: Key, t: torch.Tensor) -> None:
        old = self._mem.pop(key, None)
        if old is not None:
            self._mem_bytes -= _nbytes(old)
        self._mem[key] = t
        self._mem_bytes += _nbytes(t)

    def _evict(self) -> None:
        while self._mem_bytes > self.memory_budget_bytes and self._mem:
            _, t = self._mem.popitem(last=False)
            self._mem_bytes -= _nbytes(t)

    def _write(self, boundary: int, ids: list[int], rows: list[torch.Tensor]) -> None:
        assert self._dir is not None
        sub = self._dir / f"b{boundary}"
        sub.mkdir(exist_ok=True)
        # time first so that sorted names replay writes in order (a later entry wins)
        path = sub / f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.pt"
        lengths = torch.tensor([t.shape[0] for t in rows], dtype=torch.long)
        segment = {
            "namespace": self.namespace,
            "boundary": boundary,
            "ids": torch.tensor(ids, dtype=torch.long),
            "lengths": lengths,
            "hidden": torch.cat(rows),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(segment, tmp)
        os.replace(tmp, path)
        self._add_to_index(path, segment["ids"], lengths)

    def _add_to_index(self, path: Path, ids: torch.Tensor, lengths: torch.Tensor) -> None:
        boundary = _boundary_of(path.parent)
        starts = torch.cumsum(lengths, 0) - lengths
        for sid, start, n in zip(ids.tolist(), starts.tolist(), lengths.tolist()):
            self._index[(boundary, sid)] = (path, start, n)

    def _load(self, path: Path) -> dict[str, Any] | None:
        """A segment, memory-mapped (only the slices read are paged in), or None if it is not
        a readable segment of this namespace; such a file is deleted."""
        try:
            seg = torch.load(path, mmap=True, weights_only=True)
            n = seg["lengths"]
            if (
                seg["namespace"] != self.namespace
                or seg["boundary"] != _boundary_of(path.parent)
                or seg["hidden"].dtype != self.dtype
                or seg["ids"].shape != n.shape
                or int(n.sum()) != seg["hidden"].shape[0]
            ):
                raise ValueError("inconsistent segment")
            return seg
        except Exception:  # whatever is wrong with a cache file, it only means "not cached"
            path.unlink(missing_ok=True)
            return None

    def _scan(self) -> None:
        assert self._dir is not None
        for stale in self._dir.glob("b*/*.tmp"):  # a write cut short by a crash
            stale.unlink(missing_ok=True)
        for path in sorted(self._dir.glob("b*/*.pt")):
            if _boundary_of(path.parent) is not None and (seg := self._load(path)) is not None:
                self._add_to_index(path, seg["ids"], seg["lengths"])

    def _read(self, boundary: int, wanted: dict[int, int]) -> dict[int, torch.Tensor]:
        """Rows of the batch (row -> sample id) read from disk, one load per segment."""
        by_segment: dict[Path, list[int]] = {}
        for row, sid in wanted.items():
            by_segment.setdefault(self._index[(boundary, sid)][0], []).append(row)
        out: dict[int, torch.Tensor] = {}
        for path, rows in by_segment.items():
            seg = self._load(path)
            if seg is None:
                self._index = {k: v for k, v in self._index.items() if v[0] != path}
                continue
            for row in rows:
                _, start, n = self._index[(boundary, wanted[row])]
                out[row] = seg["hidden"][start : start + n].clone()
        return out


def _boundary_of(folder: Path) -> int | None:
    name = folder.name
    return int(name[1:]) if name.startswith("b") and name[1:].isdigit() else None


def _check_frozen(model: EncoderClassifier, boundary: int) -> None:
    """Cached states are only valid if nothing below the boundary is trained."""
    below = [model.embeddings, *model.layers[:boundary]]
    if any(p.requires_grad for m in below for p in m.parameters()):
        raise ValueError(f"boundary = {boundary}: parameters below it are trainable, not cacheable")


def prune_newer_than(root: str | Path, time_ns: int) -> int:
    """Delete the segments under `root` written after `time_ns` (their names start with the
    time they were written): resuming a run from a checkpoint puts every client's cache back
    to what it held then, so the resumed run is charged exactly as the original. Returns the
    number of files removed."""
    removed = 0
    for path in Path(root).rglob("*.pt"):
        stamp = path.name.split("-", 1)[0]
        if stamp.isdigit() and int(stamp) > time_ns:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
