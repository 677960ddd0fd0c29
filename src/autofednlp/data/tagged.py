"""Tagging data: sentences as lists of words with a tag per word, from CoNLL-style files or
from tables (JSON lines, Parquet, hub datasets) with a list-of-words and a list-of-tags column.

Every reader returns a `TaggedDataset` whose tag ids follow `tag_names`; bad input raises a
one-line `ConfigError` naming the file and the line (or row) and what is wrong with it.

Splitting and partitioning need one label per sentence: a sentence's `strata` label is its
dominant entity type, the type with the most tagged words (B-/I-/E-/S- prefixes removed; ties
go to the type first in alphabetical order), and sentences without any entity form their own
class, "O". Stratified splits and the Dirichlet and shard partitioners use it, so a skewed
federation is skewed in the entity types its clients see.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autofednlp.config import ConfigError, DataConfig

OUTSIDE = "O"


@dataclass
class TaggedDataset:
    tokens: list[list[str]]
    tags: list[list[int]]
    label_names: list[str]  # tag names, in id order
    name: str
    # where each sentence came from ("file 'x.conll' line 12", "... row 3"), for errors that
    # surface after loading (a sentence longer than data.max_length)
    origins: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def strata(self) -> list[int]:
        """Each sentence's dominant entity type, as an id into `strata_names`."""
        names = self.strata_names
        index = {n: i for i, n in enumerate(names)}
        return [index[dominant_type(t, self.label_names)] for t in self.tags]

    @property
    def strata_names(self) -> list[str]:
        return [OUTSIDE] + sorted({entity_type(t) for t in self.label_names} - {OUTSIDE})

    def select(self, indices: Sequence[int]) -> TaggedDataset:
        """The sentences at `indices`, keeping every tag name (so tag ids stay valid)."""
        return TaggedDataset(
            [self.tokens[i] for i in indices],
            [self.tags[i] for i in indices],
            list(self.label_names),
            self.name,
            [self.origins[i] for i in indices] if self.origins else [],
        )

    @staticmethod
    def concat(parts: Sequence[TaggedDataset]) -> TaggedDataset:
        return TaggedDataset(
            [s for p in parts for s in p.tokens],
            [s for p in parts for s in p.tags],
            list(parts[0].label_names),
            parts[0].name,
            [o for p in parts for o in p.origins] if all(p.origins for p in parts) else [],
        )


def entity_type(tag: str) -> str:
    """ "B-person" -> "person"; "O" (and an empty tag) -> "O"."""
    if tag in (OUTSIDE, ""):
        return OUTSIDE
    prefix, sep, rest = tag.partition("-")
    return rest if sep and prefix in ("B", "I", "E", "S", "L", "U") else tag


def dominant_type(tags: Sequence[int], names: Sequence[str]) -> str:
    counts = Counter(entity_type(names[t]) for t in tags)
    counts.pop(OUTSIDE, None)
    if not counts:
        return OUTSIDE
    return min(counts, key=lambda t: (-counts[t], t))


def ordered_tag_names(found: set[str]) -> list[str]:
    """The tag set found in data: "O" first (id 0, as is usual), then the rest sorted."""
    return ([OUTSIDE] if OUTSIDE in found else []) + sorted(found - {OUTSIDE})


def read_conll(
    path: str | Path, labels: Sequence[str] = (), field: str = "data.dataset"
) -> TaggedDataset:
    """A CoNLL-style file: one word per line with its tag in the last column (columns split by
    tabs if the line has one, else by spaces), a blank line between sentences, `-DOCSTART-`
    lines skipped. `labels` (data.labels) is the declared tag set; empty = the tags found."""
    p = Path(path).expanduser()
    where = f"file {str(p)!r}"
    if not p.is_file():
        raise ConfigError(f"{field} = {str(path)!r}: {where} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{field} = {str(path)!r}: {where} is not UTF-8 text") from None
    declared = {name: i for i, name in enumerate(labels)}
    sentences: list[list[tuple[str, str]]] = [[]]
    starts: list[int] = []  # the line each sentence starts on
    columns = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if sentences[-1]:
                sentences.append([])
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        cols = [c.strip() for c in cols]
        if cols[0] == "-DOCSTART-":
            continue
        at = f"{where} line {lineno}"
        if len(cols) < 2 or not cols[-1]:
            raise ConfigError(
                f"{field}: {at}: {line.strip()[:40]!r} has no tag (expected a word and its tag "
                "in the last column)"
            )
        if columns is None:
            columns = len(cols)
        elif len(cols) != columns:
            raise ConfigError(
                f"{field}: {at} has {len(cols)} columns where the file's first line has {columns}"
            )
        if declared and cols[-1] not in declared:
            raise ConfigError(
                f"data.labels: {at}: tag {cols[-1]!r} is not in the tag set ({', '.join(labels)})"
            )
        if not sentences[-1]:
            starts.append(lineno)
        sentences[-1].append((cols[0], cols[-1]))
    sentences = [s for s in sentences if s]
    if not sentences:
        raise ConfigError(f"{field} = {str(path)!r}: {where} has no tagged words")
    names = list(labels) or ordered_tag_names({t for s in sentences for _, t in s})
    tag_id = {t: i for i, t in enumerate(names)}
    return TaggedDataset(
        tokens=[[w for w, _ in s] for s in sentences],
        tags=[[tag_id[t] for _, t in s] for s in sentences],
        label_names=names,
        name=p.stem,
        origins=[f"{where} line {n}" for n in starts],
    )


def from_tables(
    tables: Sequence[tuple[str, Any]], cfg: DataConfig, name: str, sizes: list[int] | None = None
) -> TaggedDataset:
    """Sentences from `(where, datasets.Dataset)` pairs with a list-of-words column
    (`data.tokens_column`) and a list-of-tags column (`data.tags_column`): tag names, or ids
    with their names from a `Sequence(ClassLabel)` feature or from `data.labels`. `sizes`, if
    given, receives the number of sentences each table gave (to cut official splits apart)."""
    from datasets import ClassLabel

    tokens: list[list[str]] = []
    raw: list[list[Any]] = []
    rows: list[str] = []  # where each sentence came from, for errors about its tags
    class_names: list[str] | None = None
    for where, table in tables:
        for key, column in (("tokens_column", cfg.tokens_column), ("tags_column", cfg.tags_column)):
            if column not in table.column_names:
                hint = ""
                if key == "tokens_column" and cfg.text_column in table.column_names:
                    hint = '; for text classification set data.task = "classification"'
                raise ConfigError(
                    f"data.{key} = {column!r}: no such column in {where} "
                    f"(columns: {', '.join(table.column_names)}){hint}"
                )
        feature = table.features[cfg.tags_column]
        inner = feature[0] if isinstance(feature, list) and feature else None
        inner = inner or getattr(feature, "feature", None)
        if isinstance(inner, ClassLabel) and class_names is None:
            class_names = list(inner.names)
        columns = table.select_columns([cfg.tokens_column, cfg.tags_column]).to_dict()
        before = len(tokens)
        pairs = zip(columns[cfg.tokens_column], columns[cfg.tags_column])
        for row, (words, tags) in enumerate(pairs, start=1):
            at = f"{where} row {row}"
            for key, value in (("tokens_column", words), ("tags_column", tags)):
                if not isinstance(value, list):
                    raise ConfigError(f"data.{key}: {at} holds {value!r}, not a list")
            if len(words) != len(tags):
                raise ConfigError(
                    f"data.tags_column: {at} has {len(words)} words but {len(tags)} tags"
                )
            if words:
                tokens.append(["" if w is None else str(w) for w in words])
                raw.append(tags)
                rows.append(at)
        if sizes is not None:
            sizes.append(len(tokens) - before)
    if not tokens:
        where = tables[0][0] if len(tables) == 1 else f"dataset {cfg.dataset!r}"
        raise ConfigError(f"data.dataset = {cfg.dataset!r}: {where} has no tagged sentences")
    names, tags = _tag_ids(raw, class_names or list(cfg.labels), rows)
    return TaggedDataset(tokens, tags, names, name, rows)


def _tag_ids(
    raw: list[list[Any]], names: list[str], rows: list[str]
) -> tuple[list[str], list[list[int]]]:
    flat = [t for s in raw for t in s]
    if all(isinstance(t, str) for t in flat):
        found = set(flat)
        if not names:
            names = ordered_tag_names(found)
        index = {n: i for i, n in enumerate(names)}
        for at, s in zip(rows, raw):
            for t in s:
                if t not in index:
                    raise ConfigError(
                        f"data.labels: {at}: tag {t!r} is not in the tag set ({', '.join(names)})"
                    )
        return names, [[index[t] for t in s] for s in raw]
    if all(isinstance(t, int) and not isinstance(t, bool) for t in flat):
        if not names:
            raise ConfigError(
                f"data.labels: {rows[0].rsplit(' row ', 1)[0]} holds tag ids without names; set "
                'data.labels to the tag names in id order, e.g. ["O", "B-PER", "I-PER"]'
            )
        for at, s in zip(rows, raw):
            for t in s:
                if not 0 <= t < len(names):
                    raise ConfigError(
                        f"data.labels: {at}: tag id {t} is outside the tag set ({len(names)} tags)"
                    )
        return names, [list(s) for s in raw]
    raise ConfigError(
        f"data.tags_column: {rows[0].rsplit(' row ', 1)[0]} holds tags that are neither all "
        "strings nor all ids"
    )


def apply_tag_set(ds: TaggedDataset, labels: list[str], where: str) -> TaggedDataset:
    """Re-number `ds`'s tags by the declared tag set `labels` (a device's file, numbered by the
    server's tag set); a tag outside it is an error naming it."""
    if not labels or list(labels) == ds.label_names:
        return ds
    index = {n: i for i, n in enumerate(labels)}
    present = sorted({ds.label_names[t] for s in ds.tags for t in s})
    unknown = [t for t in present if t not in index]
    if unknown:
        raise ConfigError(
            f"data.labels: {where} has tags not in the tag set: "
            f"{', '.join(repr(u) for u in unknown[:5])} (tag set: {', '.join(labels)})"
        )
    remap = [index.get(n, -1) for n in ds.label_names]
    tags = [[remap[t] for t in s] for s in ds.tags]
    return TaggedDataset(ds.tokens, tags, list(labels), ds.name, ds.origins)
