"""``zojax train | eval | replay | export``.

Every command reads a YAML config (default: the offline default run) and accepts
``key=value`` overrides, e.g. ``zojax train zo.members=4 optim.lr=1e-5``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zojax.config import ConfigError, describe, load_config
from zojax.parallel import MeshError

__all__ = ["main"]

_CONFIG_HELP = (
    "YAML config file (default: the built-in offline default, SmolLM2-135M on Rotten Tomatoes; "
    "see configs/ for the paper setups)"
)


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="zojax",
        description="Zeroth-order (MeZO / LoZO) fine-tuning of language models, scored as one compiled program.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="{train,eval,replay,export}")
    epilog = "configuration keys (override any as key=value):\n" + describe()

    def add(name, help_text, description):
        p = sub.add_parser(
            name, help=help_text, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("--config", "-c", default=None, help=_CONFIG_HELP)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100 zo.rank=4")
        _add_distributed(p)
        return p

    p = add(
        "train",
        "fine-tune a model",
        "Fine-tune with MeZO / LoZO and report zero-shot and fine-tuned held-out accuracy. Writes metrics, "
        "checkpoints, the seed log, a plot and summary.json to train.output_dir.",
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output_dir")
    p = add(
        "eval",
        "evaluate the base model or a run's latest checkpoint",
        "Evaluate on the test split (and dev): the base model, or with --run the latest checkpoint of a run.",
    )
    p.add_argument("--run", default=None, help="run directory whose latest checkpoint to evaluate (its config.yaml is used)")
    p = add(
        "replay",
        "rebuild trained weights from the base model and a seed log",
        "Rebuild the trained weights from the base model and the run's seed log, without evaluating any loss; "
        "compare them with the latest checkpoint and optionally export them.",
    )
    p.add_argument("--run", required=True, help="run directory (holds config.yaml and seeds.jsonl)")
    p.add_argument("--output", default=None, help="write the replayed model as an HF directory here")
    p = add(
        "export",
        "write a run's latest checkpoint as a Hugging Face directory",
        "Export the latest checkpoint of a run as model.safetensors + config.json + tokenizer, loadable by "
        "transformers and by zojax.models.from_pretrained.",
    )
    p.add_argument("--run", required=True, help="run directory (holds config.yaml and checkpoints/)")
    p.add_argument("--output", required=True, help="output directory for the HF model")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    return top


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


def _maybe_distributed(args) -> None:
    from zojax.parallel import initialize

    initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)


def _run_config(args, run_dir: str | None):
    if run_dir is not None and args.config is None:
        cfg_path = Path(run_dir) / "config.yaml"
        if not cfg_path.exists():
            raise ConfigError(f"{run_dir} has no config.yaml: is it a zojax run directory?")
        return load_config(cfg_path, args.overrides)
    return load_config(args.config, args.overrides)


def _cmd_train(args) -> int:
    from zojax.train import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, resume=args.resume)
    import jax

    if jax.process_index() != 0:
        return 0
    print(f"summary: {Path(cfg.train.output_dir) / 'summary.json'}")
    keys = ("zero_shot_accuracy", "final_accuracy", "steps", "wall_seconds", "steps_per_second", "peak_memory_mb")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    return 0


def _cmd_eval(args) -> int:
    from zojax.train import build_run, evaluate, trained_params

    cfg = _run_config(args, args.run)
    run = build_run(cfg)
    params, step = (run.params, 0) if args.run is None else trained_params(run, args.run)
    report = {"step": step}
    for split in ("dev", "test"):
        report[split] = evaluate(run, params, split, cfg.train.eval_examples if split == "test" else None)
    print(json.dumps(report, indent=2))
    return 0


def _cmd_replay(args) -> int:
    import jax
    import numpy as np
    from flax import nnx

    from zojax.models import save_pretrained
    from zojax.seedlog import SeedLog, replay
    from zojax.train import build_run, trained_params

    cfg = _run_config(args, args.run)
    run = build_run(cfg)
    log = SeedLog.load(Path(args.run) / "seeds.jsonl")
    params = replay(run.params, log, run.optimizer, spec=run.spec)
    print(f"replayed {len(log.entries)} steps from {Path(args.run) / 'seeds.jsonl'}")
    try:
        ckpt_params, step = trained_params(run, args.run)
    except FileNotFoundError:
        ckpt_params = None
    if ckpt_params is not None and step == len(log.entries):
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ckpt_params)))
        print(f"replayed weights {'equal' if same else 'DIFFER FROM'} the checkpoint of step {step} (bitwise)")
        if not same:
            return 1
    if args.output:
        save_pretrained(nnx.merge(run.graphdef, params), run.model_config, args.output, run.tokenizer, overwrite=True)
        print(f"wrote {args.output}")
    return 0


def _cmd_export(args) -> int:
    from flax import nnx

    from zojax.models import save_pretrained
    from zojax.train import build_run, trained_params

    cfg = _run_config(args, args.run)
    run = build_run(cfg)
    params, step = trained_params(run, args.run)
    save_pretrained(nnx.merge(run.graphdef, params), run.model_config, args.output, run.tokenizer, overwrite=args.overwrite)
    print(f"exported step {step} of {args.run} to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _maybe_distributed(args)
        handler = {"train": _cmd_train, "eval": _cmd_eval, "replay": _cmd_replay, "export": _cmd_export}[args.command]
        return handler(args)
    except (ConfigError, MeshError, FileNotFoundError, FileExistsError) as e:
        print(f"zojax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
