"""The first-order baseline (zo.method=fo) and in-context-learning evaluation on a tiny random Llama."""

import json

import jax
import numpy as np
import pytest

from zojax.cli import main
from zojax.config import load_config
from zojax.tasks.batching import _ToyTokenizer, encode_task

from .runs import checkpoint_params, metrics, write_config


def _fo_config(assets, out, **over):
    over = {"zo__method": "fo", "zo__scope": "^norm/", "optim__name": None, "optim__lr": 3e-2, "train__eval_every": 0, **over}
    return write_config(assets, out, **over)


@pytest.fixture(scope="module")
def fo_run(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("fo") / "full"
    assert main(["train", "--config", str(_fo_config(assets, out))]) == 0
    return out


def test_fo_descends_writes_the_run_and_respects_the_scope(assets, fo_run):
    from zojax.run import build_run, trained_params

    summary = json.loads((fo_run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 12 and summary["skipped_steps"] == 0
    train = [r["loss"] for r in metrics(fo_run) if r["kind"] == "train"]
    assert train[-1] < train[0]
    assert not (fo_run / "seeds.jsonl").exists()  # nothing to replay: the checkpoints are the record
    run = build_run(load_config(fo_run / "config.yaml"))
    trained, step = trained_params(run, fo_run)
    assert step == 12
    def paths(tree):
        return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}

    before, after = paths(run.params), paths(trained)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and all("norm" in k and "layers" not in k for k in changed), changed


def test_fo_resume_is_bitwise(assets, fo_run, tmp_path):
    out = tmp_path / "stopped"
    assert main(["train", "--config", str(_fo_config(assets, out, train__stop_after=6))]) == 0
    assert main(["train", "--config", str(_fo_config(assets, out)), "--resume"]) == 0
    resumed, step = checkpoint_params(out)
    expected, _ = checkpoint_params(fo_run)
    assert step == 12
    for a, b in zip(resumed, expected):
        np.testing.assert_array_equal(a, b)


def test_fo_config_errors(assets, fo_run, tmp_path, capsys):
    from zojax.run import make_optimizer, make_spec

    cfg = load_config(_fo_config(assets, tmp_path / "x"), ["optim.name=zo_sgd"])
    with pytest.raises(ValueError, match="optim.name=zo_sgd is a ZO update; zo.method=fo takes"):
        make_optimizer(cfg, make_spec(cfg))
    assert main(["replay", "--run", str(fo_run)]) == 2
    assert "first-order run" in capsys.readouterr().err


def test_demonstrations_precede_the_prompt_and_drop_whole_from_the_far_end():
    tok = _ToyTokenizer()
    demos = [{"sentence": "good fun", "label": 1}, {"sentence": "bad", "label": 0}]
    query = [{"sentence": "so so", "label": 0}]
    enc = encode_task(query, "sst2", tok, demonstrations=demos, pad_multiple=1)
    vocab = {v: k for k, v in tok.vocab.items()}
    words = [vocab[i] for i in enc.examples[0].seqs[0]]
    assert words == ["good", "fun", "It", "was", "great", "bad", "It", "was", "terrible", "so", "so", "It", "was"]
    assert (enc.num_demonstrations, enc.demonstrations_dropped) == (2, 0)
    # room for the prompt (4 tokens) + the option + the last demonstration (4): the first one goes, whole
    enc = encode_task(query, "sst2", tok, demonstrations=demos, max_length=9, pad_multiple=1)
    assert [vocab[i] for i in enc.examples[0].seqs[0]] == ["bad", "It", "was", "terrible", "so", "so", "It", "was"]
    assert enc.demonstrations_dropped == 1 and enc.num_truncated == 0
    full = encode_task(query, "sst2", tok, demonstrations=demos, layout="full", pad_multiple=1)
    assert [vocab[i] for i in full.examples[0].seqs[1]][-4:] == ["so", "It", "was", "great"]


def test_eval_with_icl_examples(assets, tmp_path, capsys):
    cfg = write_config(assets, tmp_path / "icl")
    assert main(["eval", "--config", str(cfg), "task.icl_examples=3", "task.max_length=40"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["icl"] == {"icl_examples": 3, "icl_demonstrations_dropped": 0}
    assert 0.0 <= report["test"]["accuracy"] <= 1.0
    # a length that leaves no room: every dev/test prompt loses all three, and says so
    assert main(["eval", "--config", str(cfg), "task.icl_examples=3", "task.max_length=12"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["icl"]["icl_demonstrations_dropped"] == 3 * (40 + 60)
    with pytest.raises(ValueError, match="icl_examples=500 but the train split holds only 120"):
        from zojax.run import build_run

        build_run(load_config(cfg, ["task.icl_examples=500"]))


def test_quality_bench_counts_forwards_and_renders_its_table():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench import quality

    fo, mezo4, one = (quality._config(o) for o in (["zo.method=fo"], ["zo.members=4"], ["zo.sided=one", "zo.members=4"]))
    hizoo = quality._config(["zo.method=hizoo", "zo.members=2"])
    assert [quality.forwards_per_step(c) for c in (fo, mezo4, one, hizoo)] == [3, 8, 5, 5]
    assert quality.chosen_lr("lozo_lora_k4", {"chosen": {"lozo_lora_k1": 3e-6}}) == 3e-6  # K=4 follows K=1's sweep
    row = {"kind": "train", "lr": 1e-5, "test_accuracy": 0.8, "dev_accuracy": 0.75, "steps": 10, "forward_passes": 30,
           "train_cpu_seconds": 12.0, "train_wall_seconds": 30.0, "eval_wall_seconds": 5.0, "load_avg": [2.0, 3.0]}
    table = quality.markdown({"rows": {"fo_adamw_all": row}})
    assert "| first-order AdamW, all parameters | 1e-05 | 80.0% | 75.0% | 10 | 30 | not in 30 | 12 | 30 | 5 | 2.0–3.0 |" in table
    row["curve"] = [{"forward_passes": 12, "dev_accuracy": 0.69}, {"forward_passes": 24, "dev_accuracy": 0.70}]
    assert "| 10 | 30 | 24 | 12 |" in quality.markdown({"rows": {"fo_adamw_all": row}})
