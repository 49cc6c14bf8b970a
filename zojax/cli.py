"""``zojax train | eval | replay | export | generate | configs``.

Every command reads a YAML config (a file, or a bundled config's name such as ``opt13b_sst2_lozo``:
``zojax configs`` lists them; default: the offline default run) and accepts
``key=value`` overrides, e.g. ``zojax train zo.members=4 optim.lr=1e-5``.

A user error (bad config, model, data, or a command that would destroy or corrupt a run
directory) is one line naming the culprit and what is allowed, exit code 2, no traceback;
a run that fails (non-finite weights, every step skipped) is one line and exit code 1.
``--debug`` (or ``ZOJAX_DEBUG=1``) shows the traceback too.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import traceback
import warnings
from pathlib import Path

from zojax.config import describe, load_config
from zojax.errors import ConfigError, UserError

__all__ = ["main"]

_CONFIG_HELP = (
    "YAML config file, or the name of a bundled config (zojax configs lists them, e.g. opt13b_sst2_lozo); "
    "default: the offline default run, SmolLM2-135M on Rotten Tomatoes"
)

_DELTA_HELP = (
    "a delta written by zojax export --delta (its directory or file): the config's base model with the "
    "delta's trained leaves (refused unless the base weights are the ones it was trained from)"
)

# What the user asked for is refused (exit code 2); FileNotFoundError: a missing data or config file.
_USER_ERRORS = (UserError, FileNotFoundError, FileExistsError)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (exit code 2), like every other user error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="zojax",
        description="Zeroth-order (MeZO / LoZO) fine-tuning of language models, scored as one compiled program.",
    )
    top.add_argument("--version", action="version", version=f"zojax {_version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="{train,eval,replay,export,generate,configs}")
    epilog = (
        "configuration keys (override any as key=value; each default is the value a bare run uses, "
        "from the bundled config 'default'):\n" + describe()
    )

    def add(name, help_text, description):
        p = sub.add_parser(
            name, help=help_text, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("--config", "-c", default=None, help=_CONFIG_HELP)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100 zo.rank=4")
        p.add_argument("--debug", action="store_true", help="show the traceback of an error (or set ZOJAX_DEBUG=1)")
        _add_distributed(p)
        return p

    p = add(
        "train",
        "fine-tune a model",
        "Fine-tune with MeZO / LoZO and report zero-shot and fine-tuned held-out accuracy. Writes metrics, "
        "checkpoints, the seed log, a plot and summary.json to train.output_dir, which must be new or empty.",
    )
    p.add_argument(
        "--resume", action="store_true",
        help="continue from the latest checkpoint in train.output_dir (only keys that do not change what a step "
        "computes may differ: steps, eval/checkpoint cadence, output details)",
    )
    p = add(
        "eval",
        "evaluate the base model or a run's latest checkpoint",
        "Evaluate on the test split (and dev): the base model, or with --run the latest checkpoint of a run "
        "(its best dev checkpoint if it was trained with train.keep_best).",
    )
    p.add_argument("--run", default=None, help="run directory whose latest checkpoint to evaluate (its config.yaml is used)")
    p.add_argument("--delta", default=None, help=_DELTA_HELP)
    p = add(
        "replay",
        "rebuild trained weights from the base model and a seed log",
        "Rebuild the trained weights from the base model and the run's seed log, without evaluating any loss; "
        "compare them with the latest checkpoint and optionally export them.",
    )
    p.add_argument("--run", required=True, help="run directory (holds config.yaml and seeds.jsonl)")
    p.add_argument("--output", default=None, help="write the replayed model as an HF directory here (outside the run)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output model directory")
    p = add(
        "export",
        "write a run's latest checkpoint as a Hugging Face directory",
        "Export the latest checkpoint (with train.keep_best: the best dev one) of a run as model.safetensors + "
        "config.json + tokenizer, loadable by transformers and by zojax.models.from_pretrained.",
    )
    p.add_argument("--run", required=True, help="run directory (holds config.yaml and checkpoints/)")
    p.add_argument("--output", required=True, help="output directory for the HF model (outside the run)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output model directory")
    p.add_argument(
        "--delta", action="store_true",
        help="write only the trained leaves (delta.safetensors, with the base model's name and the hash of its "
        "weights); apply it with zojax eval/generate --delta or zojax.models.apply_delta",
    )
    p = add(
        "generate",
        "continue a prompt with a run's latest checkpoint (or the base model)",
        "Print the continuation of PROMPT (one positional argument, or --prompt for one holding '='; key=value "
        "arguments are config overrides) "
        "by the latest checkpoint of --run, or without --run by the config's base model. Greedy with "
        "--temperature 0 (the default), sampled otherwise.",
    )
    p.add_argument("--run", default=None, help="run directory whose latest checkpoint to use (its config.yaml is used)")
    p.add_argument("--delta", default=None, help=_DELTA_HELP)
    p.add_argument("--prompt", default=None, help="the prompt, instead of the positional one (for a prompt holding '=')")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the K likeliest tokens (default 0: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument(
        "--chat", action="store_true",
        help="send PROMPT as a user message through the tokenizer's chat template (instruction-tuned models, "
        "e.g. the default SmolLM2-135M-Instruct) instead of continuing it as plain text",
    )
    sub.add_parser(
        "configs", help="list the bundled configs (name them with --config NAME)",
        description="List the configs shipped with zojax: the offline default run and the paper setups. "
        "Name one with --config NAME; a path to your own YAML file works too.",
    ).set_defaults(overrides=[], debug=False)
    return top


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zojax")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _add_distributed(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-host (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    g.add_argument("--coordinator", default=None, help="coordinator address host:port for jax.distributed")
    g.add_argument("--num-processes", type=int, default=None, help="number of processes in the job")
    g.add_argument("--process-id", type=int, default=None, help="this process's index")
    g.add_argument(
        "--distributed", action="store_true",
        help="jax.distributed.initialize() with the cluster detected by JAX (TPU pods, SLURM, Open MPI); "
        "or set ZOJAX_DISTRIBUTED=1",
    )


def _parse(argv: list[str] | None):
    """Arguments, with overrides allowed anywhere (also after --resume or --config)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # generate's prompt is the one positional that is not key=value (it may follow any option)
    unknown = [a for a in extra if a.startswith("-") or ("=" not in a and args.command != "generate")]
    if unknown:
        command = f"zojax {args.command}"
        parser.exit(2, f"{command}: error: unrecognized arguments: {' '.join(unknown)} (see {command} --help)\n")
    args.overrides = list(args.overrides) + extra
    return args


def _maybe_distributed(args) -> None:
    from zojax.parallel import initialize

    initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)


def _check_buildable(cfg) -> None:
    """Build what a config names but loads nothing (task, objective, spec, optimiser), so that a bad
    combination is a config error before any model or data is loaded."""
    from zojax import tasks
    from zojax.run import make_optimizer, make_spec
    from zojax.run.reward import REWARD_TASK_NAMES

    known = set(tasks.TASKS) | set(REWARD_TASK_NAMES)
    if cfg.task.name.lower().replace("-", "_") not in known:
        raise ConfigError(f"task.name {cfg.task.name!r} is not a task; known: {', '.join(sorted(known))}")
    try:
        tasks.get_objective(cfg.train.objective)
    except KeyError as e:
        raise ConfigError(f"train.objective: {e.args[0]}") from None
    try:
        make_optimizer(cfg, make_spec(cfg))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid configuration: {e}") from None


def _run_config(args, *, replay: bool = False):
    """The config of ``--run``'s checkpoints, checked, for a command that reads them."""
    from zojax import rundir

    cfg = rundir.run_config(args.run, args.config, args.overrides, replay=replay)
    _check_buildable(cfg)
    return cfg


def _require_checkpoint(run_dir) -> None:
    from zojax.errors import RunDirError
    from zojax.rundir import checkpoint_steps

    if not checkpoint_steps(Path(run_dir)):
        raise RunDirError(f"{run_dir} has no checkpoint (no {Path(run_dir) / 'checkpoints'}/N): nothing to read")


def _cmd_configs(args) -> int:
    from zojax.config import bundled_configs

    configs = bundled_configs()
    width = max(map(len, configs))
    for name, summary in configs.items():
        print(f"{name:<{width}}  {summary}")
    return 0


def _cmd_train(args) -> int:
    from zojax.train import train

    cfg = load_config(args.config, args.overrides)
    _check_buildable(cfg)
    summary = train(cfg, resume=args.resume)
    import jax

    if jax.process_index() != 0:
        return 0
    print(f"summary: {Path(cfg.train.output_dir) / 'summary.json'}")
    keys = ("zero_shot_accuracy", "final_accuracy", "steps", "wall_seconds", "steps_per_second", "peak_memory_mb")
    shown = {k: summary.get(k) for k in keys}
    shown.update({k: summary[k] for k in ("zero_shot_reward", "final_reward") if k in summary})  # reward tasks
    print(json.dumps(shown, indent=2))
    return 0


def _run_and_weights(args, *, data: bool = True):
    """The run of ``--run`` with its latest checkpoint's weights, or the config's base model (``data=False``:
    without encoding the task, for commands that only run the model)."""
    from zojax.run import build_run, trained_params

    if args.run is None:
        cfg = load_config(args.config, args.overrides)
        _check_buildable(cfg)
    else:
        if args.delta is not None:
            raise ConfigError("--delta applies to the config's base model, --run uses the run's checkpoint: give one")
        cfg = _run_config(args)
        _require_checkpoint(args.run)
    run = build_run(cfg, data=data)
    params, step = (run.params, 0) if args.run is None else trained_params(run, args.run)
    if args.delta is not None:
        from flax import nnx

        from zojax.models import apply_delta

        params = nnx.split(apply_delta(nnx.merge(run.graphdef, params), args.delta))[1]
    return cfg, run, params, step


def _cmd_eval(args) -> int:
    from zojax.run import evaluate

    cfg, run, params, step = _run_and_weights(args)
    report = {"step": step}
    if cfg.task.icl_examples:
        report["icl"] = {k: run.data_info[k] for k in ("icl_examples", "icl_demonstrations_dropped")}
    for split in ("dev", "test"):
        report[split] = evaluate(run, params, split, cfg.train.eval_examples)  # the cap holds for dev too
    print(json.dumps(report, indent=2))
    return 0


def _cmd_replay(args) -> int:
    import jax
    import numpy as np
    from flax import nnx

    from zojax.models import save_pretrained
    from zojax.run import build_run, trained_params
    from zojax.rundir import check_output, checkpoint_steps
    from zojax.seedlog import SeedLog, replay

    cfg = _run_config(args, replay=True)
    if cfg.zo.method == "fo":
        raise ConfigError(f"{args.run} is a first-order run (zo.method=fo): it has no seed log to replay; use zojax export")
    if args.output:
        check_output(args.output, cfg, args.run, args.overwrite)
    log_path = Path(args.run) / "seeds.jsonl"
    log = SeedLog.load(log_path)
    run = build_run(cfg, data=False)  # replaying evaluates no loss: no task data
    # the last checkpoint, which the whole log rebuilds (not train.keep_best's choice)
    ckpt_params, step = trained_params(run, args.run, best=False) if checkpoint_steps(Path(args.run)) else (None, None)
    # the log must hold steps 0 .. N-1, N being the checkpoint's step: a gap or a short log rebuilds other weights
    log.check_steps(len(log.entries) if step is None else step, where=log_path, exact=True)
    params = replay(run.params, log, run.optimizer, spec=run.spec)
    print(f"replayed {len(log.entries)} steps from {log_path}")
    if ckpt_params is None:
        print(f"no checkpoint in {Path(args.run) / 'checkpoints'} to compare with")
    else:
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ckpt_params)))
        print(f"replayed weights {'equal' if same else 'DIFFER FROM'} the checkpoint of step {step} (bitwise)")
        if not same:
            return 1
    if args.output:
        save_pretrained(nnx.merge(run.graphdef, params), run.model_config, args.output, run.tokenizer, overwrite=args.overwrite)
        print(f"wrote {args.output}")
    return 0


def _cmd_export(args) -> int:
    from flax import nnx

    from zojax.models import save_pretrained
    from zojax.run import build_run, trained_params
    from zojax.rundir import check_output

    cfg = _run_config(args)
    check_output(args.output, cfg, args.run, args.overwrite)
    _require_checkpoint(args.run)
    run = build_run(cfg, data=False)  # exporting reads weights only: no task data
    params, step = trained_params(run, args.run)
    if args.delta:
        file = _save_delta(run, params, cfg.model.name, args.output, args.overwrite)
        print(f"exported the trained leaves of step {step} of {args.run} to {file} ({file.stat().st_size} bytes)")
        return 0
    save_pretrained(nnx.merge(run.graphdef, params), run.model_config, args.output, run.tokenizer, overwrite=args.overwrite)
    print(f"exported step {step} of {args.run} to {args.output}")
    return 0


def _save_delta(run, params, base_model: str, output, overwrite: bool):
    """The leaves the run's scope trains, as a delta of its base model."""
    import jax
    from flax import nnx

    from zojax.models import save_delta, weights_hash
    from zojax.paths import path_str
    from zojax.scope import partition

    trainable, _ = partition(params, run.spec.scope, run.spec.noise)
    leaves = {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(trainable)[0]}
    base_hash = weights_hash(nnx.merge(run.graphdef, run.params))
    return save_delta(output, leaves, base_model=base_model, base_hash=base_hash, overwrite=overwrite)


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def _cmd_generate(args) -> int:
    from flax import nnx

    from zojax.models import generate
    from zojax.models.generate import check_sampling

    prompts = [a for a in args.overrides if not _OVERRIDE.match(a)]
    args.overrides = [a for a in args.overrides if _OVERRIDE.match(a)]
    if args.prompt is not None:
        prompts.insert(0, args.prompt)
    if len(prompts) != 1:
        raise ConfigError(
            f"generate takes one prompt (quote it; a prompt holding '=' goes in --prompt), got {len(prompts)}: {prompts}"
        )
    check_sampling(args.max_new_tokens, args.temperature, args.top_k)
    _, run, params, _ = _run_and_weights(args, data=False)  # generating needs no task data
    model = nnx.merge(run.graphdef, params)
    prompt = _chat_prompt(run.tokenizer, prompts[0]) if args.chat else prompts[0]
    text = generate(
        model, run.tokenizer, prompt, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, seed=args.seed,
    )
    print(text)
    return 0


def _chat_prompt(tokenizer, message: str) -> str:
    """``message`` as the user's turn of the tokenizer's chat template, ready for the assistant's answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("--chat: this model's tokenizer has no chat template; without --chat the prompt is continued as text")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )


def _one_line(e: BaseException) -> str:
    # multi-line messages (e.g. every bad tensor of a checkpoint) become one line
    return re.sub(r"\s*\n\s*", " ", str(e)).strip() or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    # transformers warns at import that PyTorch is missing; zojax uses only its configs and tokenizers
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    args = _parse(argv)
    debug = args.debug or os.environ.get("ZOJAX_DEBUG", "") not in ("", "0")
    from zojax.errors import TrainingError

    with warnings.catch_warnings():  # restores the caller's warning display when main() returns
        if not debug:
            warnings.showwarning = functools.partial(_show_warning, args.command)
        try:
            if args.command != "configs":
                _maybe_distributed(args)
            handler = {"train": _cmd_train, "eval": _cmd_eval, "replay": _cmd_replay, "export": _cmd_export,
                       "generate": _cmd_generate, "configs": _cmd_configs}[args.command]
            return handler(args)
        except (*_USER_ERRORS, TrainingError) as e:
            if debug:
                traceback.print_exc()
            print(f"zojax {args.command}: error: {_one_line(e)}", file=sys.stderr)
            return 1 if isinstance(e, TrainingError) else 2


def _show_warning(command, message, category, filename, lineno, file=None, line=None) -> None:
    # what a user should read (a dropped torn line, a fallback checkpoint), without source lines
    print(f"zojax {command}: warning: {_one_line(message)}", file=file or sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
