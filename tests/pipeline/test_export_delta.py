"""zojax export --delta and eval/generate --delta (issue 24): only the trained leaves, applied to the base model;
zojax eval's examples cap; generate --chat."""

import json
import os
import shutil
import stat

import pytest

from zojax.cli import main
from zojax.models import load_delta

from .runs import refused, tiny_config


def _eval(capsys, argv):
    capsys.readouterr()
    assert main(["eval", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_delta_export_evaluates_as_the_run(assets, tmp_path, capsys):
    out = tmp_path / "norm_run"
    config = tiny_config(assets, out, zo__scope="norm", zo__method="mezo")  # a few 1-D leaves trained
    assert main(["train", "--config", str(config)]) == 0
    os.umask(old := os.umask(0o022))
    try:
        assert main(["export", "--run", str(out), "--output", str(tmp_path / "delta"), "--delta"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "delta").stat().st_mode) == 0o755
    tensors, meta = load_delta(tmp_path / "delta")
    assert tensors and all("norm" in name for name in tensors)  # the scope's leaves only
    assert meta["base_model"] == str(assets / "model")

    by_run = _eval(capsys, ["--run", str(out)])
    by_delta = _eval(capsys, ["--config", str(config), "--delta", str(tmp_path / "delta")])
    base = _eval(capsys, ["--config", str(config)])
    capped = _eval(capsys, ["--config", str(config), "train.eval_examples=7"])  # zojax eval caps dev too
    assert capped["dev"]["examples"] == capped["test"]["examples"] == 7 < base["dev"]["examples"]
    assert by_delta["dev"] == by_run["dev"] and by_delta["test"] == by_run["test"]
    assert by_delta["dev"] != base["dev"] or by_delta["test"] != base["test"]  # the delta changed something

    assert main(["generate", "--config", str(config), "--delta", str(tmp_path / "delta"), "It was",
                 "--max-new-tokens", "2"]) == 0
    refused(capsys, main(["eval", "--run", str(out), "--delta", str(tmp_path / "delta")]), "give one")
    # other base weights (here: stored in bfloat16) hash differently
    refused(capsys, main(["eval", "--config", str(config), "--delta", str(tmp_path / "delta"), "model.param_dtype=bfloat16"]),
            "load the delta's base model")


@pytest.mark.slow
def test_generate_chat_uses_the_tokenizers_template(assets, tmp_path, capsys):
    config = tiny_config(assets, tmp_path / "unused")
    args = ["generate", "--config", str(config), "good", "--chat", "--max-new-tokens", "2"]
    refused(capsys, main(args), "--chat: this model's tokenizer has no chat template")
    model = tmp_path / "chat_model"
    shutil.copytree(assets / "model", model)
    tok_config = json.loads((model / "tokenizer_config.json").read_text())
    tok_config["chat_template"] = "{% for m in messages %}{{ m['content'] }} It was{% endfor %}"
    (model / "tokenizer_config.json").write_text(json.dumps(tok_config))
    capsys.readouterr()
    assert main([*args, f"model.name={model}"]) == 0
    assert capsys.readouterr().out.strip()


def test_generate_export_and_replay_load_no_task_data(run, tmp_path, capsys, monkeypatch):
    # they only run or read the model: a missing data file must not matter (nor cost the time to encode it)
    import zojax.tasks

    def no_data(*args, **kwargs):
        raise AssertionError("task data loaded")

    monkeypatch.setattr(zojax.tasks, "load_task_data", no_data)
    run_dir, config = run
    assert main(["generate", "--run", str(run_dir), "It was", "--max-new-tokens", "2"]) == 0
    assert main(["export", "--run", str(run_dir), "--output", str(tmp_path / "hf")]) == 0
    assert main(["replay", "--run", str(run_dir)]) == 0
