"""Population and model sharding, and multi-host runs: the result does not depend on the mesh.

The mesh tests run in subprocesses with several virtual CPU devices
(``--xla_force_host_platform_device_count``): one process with 8 devices trains a tiny random
Llama through the CLI and through the API with no mesh, ``pop=8`` and ``pop=4 x model=2``;
then two processes with 2 devices each (coordinator on localhost, gloo CPU collectives) train
the same run with ``pop=2 x model=2`` spanning both. This file is also the worker script.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
MEMBERS = 8
MESHES = {"single": None, "pop8": (8, 1), "pop4_model2": (4, 2)}
# These tests compare numbers, not speed: skip LLVM's optimisations to halve compile time.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _run_worker(args: list[str], devices: int, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(HERE), *args],
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"worker {args[0]} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


# --- in process: mesh arithmetic and errors --------------------------------------------------


def test_mesh_errors_and_sharding_rules():
    import jax
    from jax.sharding import AbstractMesh
    from jax.sharding import PartitionSpec as P

    from zojax import parallel
    from zojax.parallel import MeshError, check_population, make_mesh, param_spec

    eight = jax.devices()[:1] * 8  # the checks fire before any mesh is built
    with pytest.raises(MeshError, match=r"pop=3 x model=1 = 3 devices does not divide the 8 devices"):
        make_mesh(3, 1, eight)
    with pytest.raises(MeshError, match="at most one of mesh.pop and mesh.model may be -1"):
        make_mesh(-1, -1, eight)
    with pytest.raises(MeshError, match=r"3 does not divide the 8 devices, so -1 has no value"):
        make_mesh(-1, 3, eight)
    with pytest.raises(MeshError, match="positive integer or -1"):
        make_mesh(0, 1)
    with pytest.raises(MeshError, match="does not divide the 1 devices"):
        make_mesh(2, 1)
    assert dict(make_mesh(-1, 1).shape) == {"pop": 1, "model": 1}
    mesh = AbstractMesh((4, 2), ("pop", "model"))
    with pytest.raises(MeshError, match=r"\(pop=4\) does not divide the number of members K=6"):
        check_population(mesh, 6)
    check_population(mesh, 8)

    rules = {
        ("layers/self_attn/q_proj/kernel", (2, 32, 32)): P(None, None, "model"),
        ("layers/self_attn/k_proj/bias", (2, 16)): P(None, "model"),
        ("layers/mlp/gate_proj/kernel", (2, 32, 64)): P(None, None, "model"),
        ("layers/fc1/kernel", (2, 32, 64)): P(None, None, "model"),
        ("layers/self_attn/o_proj/kernel", (2, 32, 32)): P(None, "model", None),
        ("layers/self_attn/out_proj/kernel", (2, 32, 32)): P(None, "model", None),
        ("layers/mlp/down_proj/kernel", (2, 64, 32)): P(None, "model", None),
        ("layers/fc2/kernel", (2, 64, 32)): P(None, "model", None),
        ("layers/fc2/bias", (2, 32)): P(None, None),
        ("embed_tokens/embedding", (48, 32)): P("model", None),
        ("embed_tokens/embedding", (47, 32)): P(None, None),  # not divisible: replicated
        ("lm_head/kernel", (32, 48)): P(None, "model"),
        ("layers/input_layernorm/scale", (2, 32)): P(None, None),
        ("embed_positions/embedding", (66, 32)): P(None, None),
    }
    for (path, shape), expected in rules.items():
        assert param_spec(path, shape, mesh) == expected, path
    assert param_spec(
        "layers/mlp/down_proj/kernel", (2, 64, 32), AbstractMesh((8, 1), ("pop", "model"))
    ) == P(None, None, None)
    assert parallel.initialize() is False  # no coordinator in the environment: single process


# --- 8 virtual devices: CLI and API, three meshes ------------------------------------------------


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    tic = time.time()
    _run_worker(["eight", str(root)], devices=8)
    result = json.loads((root / "result.json").read_text())
    result["root"] = root
    result["seconds"] = time.time() - tic
    return result


def _params(root: Path, name: str) -> list[np.ndarray]:
    with np.load(root / f"params_{name}.npz") as f:
        return [f[k] for k in sorted(f.files, key=int)]


def test_cli_runs_agree_across_meshes(eight):
    root = eight["root"]
    ref = eight["runs"]["single"]
    ref_params = _params(root, "single")
    assert ref["steps"] == 4 and np.isfinite(ref["final_loss"])
    for name in ("pop8", "pop4_model2"):
        run = eight["runs"][name]
        np.testing.assert_allclose(run["train_losses"], ref["train_losses"], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(run["final_loss"], ref["final_loss"], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(run["zero_shot_loss"], ref["zero_shot_loss"], rtol=1e-5, err_msg=name)
        params = _params(root, name)
        assert len(params) == len(ref_params)
        for a, b in zip(params, ref_params, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    assert eight["runs"]["pop4_model2"]["devices"] == 8


def test_api_agrees_with_cli_and_shards_as_asked(eight):
    for name in MESHES:
        api = eight["api"][name]
        # same compiled program, same inputs as the trainer: bitwise
        assert api["max_param_diff_vs_cli"] == 0.0, name
        np.testing.assert_allclose(api["losses"], eight["api"]["single"]["losses"], rtol=1e-5, err_msg=name)
    specs = eight["api"]["pop4_model2"]["specs"]
    assert specs["layers/self_attn/q_proj/kernel"] == [None, None, "model"]
    assert specs["layers/mlp/down_proj/kernel"] == [None, "model", None]
    assert specs["embed_tokens/embedding"] == ["model", None]
    assert specs["norm/scale"] == [None]
    # weights are replicated over 'pop': each device holds a full (or model-sharded) copy
    assert eight["api"]["pop8"]["shard_shape"]["layers/mlp/down_proj/kernel"] == [2, 64, 32]
    assert eight["api"]["pop4_model2"]["shard_shape"]["layers/mlp/down_proj/kernel"] == [2, 32, 32]


# The dynamic adapter state's fresh factors U, (K, layers, d_out, rank), all members: GSPMD may
# draw them spread over the devices and gather them (a few KB; never a weight or activation).
ADAPTER_FACTOR_ELEMENTS = MEMBERS * 2 * 64 * 2


def test_only_losses_cross_the_population_axis(eight):
    # pop=8: no weight, activation or dense direction ever moves between devices; the only
    # collectives carry the K x 2 losses (and scalars derived from them)
    collectives = eight["hlo"]["pop8"]
    assert collectives, "expected the gather of the losses"
    for op in collectives:
        assert op["elements"] <= 2 * MEMBERS, op
    # pop=4 x model=2: anything bigger than the losses stays inside a model group of 2
    for op in eight["hlo"]["pop4_model2"]:
        if op["op"] == "all-gather" and op["elements"] <= ADAPTER_FACTOR_ELEMENTS:
            continue
        if op["elements"] > 2 * MEMBERS:
            assert op["group_size"] == 2, op


def test_optax_state_one_sided_and_micro_batches_on_a_mesh(eight):
    toy = eight["toy"]
    # one-sided differences at eps=1e-3 and adam's normalisation amplify float32 rounding
    np.testing.assert_allclose(toy["pop4_model2"]["losses"], toy["single"]["losses"], rtol=1e-4, atol=1e-5)
    for a, b in zip(toy["pop4_model2"]["params"], toy["single"]["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert toy["pop4_model2"]["mu_spec"] == ["None", "model"]  # adam's moments sharded like fc1/kernel


def test_mesh_errors_on_eight_devices(eight):
    errors = eight["errors"]
    assert "does not divide the number of members K=6" in errors["score"]
    assert errors["cli_members"]["rc"] == 2 and "K=4" in errors["cli_members"]["stderr"]
    assert (
        errors["cli_devices"]["rc"] == 2
        and "does not divide the 8 devices" in errors["cli_devices"]["stderr"]
    )


# --- two processes on localhost ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(eight, tmp_path):
    root = eight["root"]
    address = f"127.0.0.1:{_free_port()}"
    out = tmp_path / "multihost"
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE), "host", str(root), str(out), address, str(pid)],
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in (0, 1)
    ]
    logs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            logs.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for pid, (rc, stdout, stderr) in enumerate(logs):
        assert rc == 0, f"process {pid} failed ({rc}):\n{stdout[-3000:]}\n{stderr[-6000:]}"
    ref = eight["runs"]["single"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and len(summary["devices"]) == 4
    np.testing.assert_allclose(summary["final_loss"], ref["final_loss"], rtol=1e-5)
    train = [
        r["loss"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "train"
    ]
    np.testing.assert_allclose(train, ref["train_losses"], rtol=1e-5)
    for a, b in zip(_params(out, "multihost"), _params(root, "single"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # only process 0 wrote the logs, the plot and the summary
    assert (out / "curves.png").exists() and "summary:" in logs[0][1] and "summary:" not in logs[1][1]


# --- workers (run as scripts in the subprocesses) ------------------------------------------------

def _write_config(root: Path) -> Path:
    import yaml

    cfg = {
        "model": {"name": str(root / "model")},
        "task": {
            "name": "sst2",
            "source": str(root / "data.jsonl"),
            "columns": {"sentence": "text", "label": "sentiment"},
            "label_map": {"neg": 0, "pos": 1},
            "num_train": 64,
            "num_dev": 16,
            "num_test": 16,
            "max_length": 16,
        },
        # chunk_size 2: one device scores 4 chunks (lax.map), pop=8 one member, pop=4 two (vmap).
        # Two trained leaves, one column- and one row-parallel (compile time grows with the
        # number of trained leaves); the other weights are frozen but sharded all the same.
        "zo": {
            "method": "lozo",
            "rank": 2,
            "refresh_every": 2,
            "members": MEMBERS,
            "eps": 1e-2,
            "scope": "(q_proj|down_proj)/kernel$",
            "chunk_size": 2,
        },
        "optim": {"name": "zo_sgd", "lr": 5e-3},
        "train": {
            "steps": 4,
            "batch_size": 8,
            "steps_per_call": 2,
            "eval_every": 0,
            "eval_batch_size": 16,
            "checkpoint_every": 0,
            "progress": False,
        },
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _mesh_overrides(shape) -> list[str]:
    return [] if shape is None else [f"mesh.pop={shape[0]}", f"mesh.model={shape[1]}"]


def _gather_params(params) -> list[np.ndarray]:
    import jax
    from jax.experimental import multihost_utils

    out = []
    for x in jax.tree.leaves(params):
        if jax.process_count() > 1 and not x.is_fully_addressable:
            x = multihost_utils.process_allgather(x, tiled=True)
        out.append(np.asarray(x))
    return out


def _save_params(path: Path, leaves) -> None:
    np.savez(path, **{str(i): x for i, x in enumerate(leaves)})


def _collectives(hlo: str, mesh_shape) -> list[dict]:
    """Cross-device ops of a compiled HLO module: kind, element count and replica-group size."""
    out = []
    for line in hlo.splitlines():
        m = re.search(
            r"=\s*(\(.*?\)|\S+)\s+(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(-start)?\(",
            line,
        )
        if not m:
            continue
        elements = sum(
            int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", m.group(1))
        )
        group = None
        if g := re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[", line):
            group = int(g.group(2))
        elif g := re.search(r"replica_groups=\{\{([\d,]+)\}", line):
            group = len(g.group(1).split(","))
        elif g := re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line):
            sizes = dict(re.findall(r"'(\w+)'=(\d+)", g.group(1)))
            group = int(np.prod([int(sizes[a]) for a in re.findall(r"'(\w+)'", g.group(2))]))
        out.append({"op": m.group(2), "elements": elements, "group_size": group, "line": line.strip()[:300]})
    return out


def _toy_optax(jax, jnp, zojax, parallel) -> dict:
    """A plain loss_fn with densify + adam, one-sided differences and 2 micro-batches: the
    optimiser state is sharded like the weights and the result does not depend on the mesh."""
    import optax

    params = {
        "fc1": {"kernel": jnp.linspace(-1, 1, 8 * 16).reshape(8, 16)},
        "fc2": {"kernel": jnp.linspace(1, -1, 16 * 4).reshape(16, 4), "bias": jnp.zeros(4)},
    }
    x = jnp.linspace(-2, 2, 2 * 6 * 8).reshape(2, 6, 8)  # (micro-batches, examples, features)
    batch = {"x": x, "y": jnp.tanh(x[..., :4])}

    def loss_fn(p, b):
        h = jnp.tanh(b["x"] @ p["fc1"]["kernel"])
        return jnp.mean((h @ p["fc2"]["kernel"] + p["fc2"]["bias"] - b["y"]) ** 2)

    spec = zojax.ZOSpec(noise=zojax.Gaussian(), eps=1e-3, members=MEMBERS, sided="one")
    opt = optax.chain(zojax.densify(), optax.adam(1e-2))
    out = {}
    for name, shape in (("single", None), ("pop4_model2", (4, 2))):
        mesh = None if shape is None else parallel.make_mesh(*shape)
        state, frozen = zojax.init(jax.tree.map(jnp.copy, params), spec, opt, jax.random.PRNGKey(3))
        state, frozen = parallel.shard_run(state, frozen, mesh)
        b = batch if mesh is None else parallel.replicate(batch, mesh)
        for _ in range(2):
            state, info = zojax.step(
                state, frozen, b, loss_fn=loss_fn, spec=spec, optimizer=opt, micro_batches=2, mesh=mesh
            )
        mu = state.opt_state[1][0].mu["fc1"]["kernel"]
        out[name] = {
            "losses": np.asarray(info.losses).tolist(),
            "params": [np.asarray(v).tolist() for v in jax.tree.leaves(state.params)],
            "mu_spec": [str(a) for a in mu.sharding.spec] if mesh is not None else None,
        }
    return out


def _worker_eight(root: Path) -> None:
    """Train with no mesh, pop=8 and pop=4 x model=2 through the CLI and the API; record everything."""
    import jax
    import jax.numpy as jnp

    import zojax
    from tests.tiny_assets import make_assets  # absolute: this file runs as a script, ROOT on PYTHONPATH
    from zojax import parallel, tasks
    from zojax.cli import main
    from zojax.config import load_config
    from zojax.paths import path_str
    from zojax.run import build_run, trained_params, weights

    assert jax.device_count() == 8
    timings = {}
    tic = time.time()
    # the pipeline tests' tiny Llama with an untied LM head and a vocabulary of 48, which the model axis divides
    make_assets(root, rows=120, movie=False, vocab_size=48, tie=False)
    config = _write_config(root)
    timings["assets"] = time.time() - tic
    result = {"runs": {}, "api": {}, "hlo": {}, "errors": {}}
    for name, shape in MESHES.items():
        tic = time.time()
        overrides = [f"train.output_dir={root / name}", *_mesh_overrides(shape)]
        assert main(["train", "--config", str(config), *overrides]) == 0
        summary = json.loads((root / name / "summary.json").read_text())
        records = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
        result["runs"][name] = {
            "steps": summary["steps"],
            "final_loss": summary["final_loss"],
            "zero_shot_loss": summary["zero_shot_loss"],
            "train_losses": [r["loss"] for r in records if r["kind"] == "train"],
            "devices": len(summary["devices"]),
        }
        timings[f"cli_{name}"] = time.time() - tic

        # The same run through the API: init, place on the mesh, fused steps.
        tic = time.time()
        cfg = load_config(config, overrides)
        run = build_run(cfg)
        cli_params, _ = trained_params(run, root / name)
        cli_leaves = _gather_params(cli_params)
        _save_params(root / f"params_{name}.npz", cli_leaves)
        mesh = None if shape is None else parallel.make_mesh(*shape)
        state, frozen = zojax.init(
            jax.tree.map(jnp.copy, run.params), run.spec, run.optimizer, jax.random.PRNGKey(0)
        )
        state, frozen = parallel.shard_run(state, frozen, mesh)
        assert (run.mesh is None) == (mesh is None)  # run.compiled is the trainer's step, on the config's mesh
        losses = []
        for start in (0, 2):
            batches = tasks.train_batches(
                run.split("train"), cfg.task.data_seed, start, 2, 8, seq_len=run.split("train").seq_len
            )
            if mesh is not None:
                batches = parallel.replicate(batches, mesh)
                if start == 0:  # the trainer's compiled program
                    hlo = run.compiled.run_steps.lower(state, frozen, batches).compile().as_text()
                    result["hlo"][name] = _collectives(hlo, shape)
            state, info = run.compiled.run_steps(state, frozen, batches)
            losses.append(np.asarray(info.losses).tolist())
        final = weights(run, state, frozen)  # as the trainer exports it; frozen leaves are sharded too
        api_leaves = _gather_params(final)
        flat = jax.tree_util.tree_flatten_with_path(final)[0]
        result["api"][name] = {
            "losses": losses,
            "max_param_diff_vs_cli": max(
                float(np.max(np.abs(a - b))) for a, b in zip(api_leaves, cli_leaves, strict=True)
            ),
            "specs": {
                path_str(p): list(x.sharding.spec) + [None] * (x.ndim - len(x.sharding.spec))
                for p, x in flat
                if hasattr(x.sharding, "spec")
            },
            "shard_shape": {path_str(p): list(x.addressable_shards[0].data.shape) for p, x in flat},
        }
        timings[f"api_{name}"] = time.time() - tic

    tic = time.time()
    result["toy"] = _toy_optax(jax, jnp, zojax, parallel)
    timings["toy"] = time.time() - tic

    # Errors: K not divisible by pop (API and CLI), a mesh that does not divide the devices.
    mesh = parallel.make_mesh(8, 1)
    spec = zojax.ZOSpec(members=6)
    try:
        zojax.score(
            lambda p, b: jnp.sum(p["w"]), {"w": jnp.zeros(2)}, None, jax.random.PRNGKey(0), 0, spec, mesh=mesh
        )
        result["errors"]["score"] = "no error"
    except parallel.MeshError as e:
        result["errors"]["score"] = str(e)
    for key, overrides in (("cli_members", ["mesh.pop=8", "zo.members=4"]), ("cli_devices", ["mesh.pop=3"])):
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            rc = main(["train", "--config", str(config), f"train.output_dir={root / key}", *overrides])
        result["errors"][key] = {"rc": rc, "stderr": stderr.getvalue()[-2000:]}
    result["timings"] = timings
    (root / "result.json").write_text(json.dumps(result))


def _worker_host(root: Path, out: Path, address: str, pid: int) -> None:
    """One process of a two-process run (2 devices each): pop=2 x model=2 over all 4 devices."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
    from zojax.cli import main
    from zojax.config import load_config
    from zojax.run import build_run, trained_params

    overrides = [f"train.output_dir={out}", "mesh.pop=2", "mesh.model=2"]
    flags = ["--coordinator", address, "--num-processes", "2", "--process-id", str(pid)]
    assert main(["train", "--config", str(root / "config.yaml"), *flags, *overrides]) == 0
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    # every process restores the (multi-host) checkpoint; process 0 saves the gathered weights
    run = build_run(load_config(root / "config.yaml", overrides))
    params, step = trained_params(run, out)
    leaves = _gather_params(params)
    assert step == 4
    if pid == 0:
        _save_params(out / "params_multihost.npz", leaves)


if __name__ == "__main__":
    if sys.argv[1] == "eight":
        _worker_eight(Path(sys.argv[2]))
    elif sys.argv[1] == "host":
        _worker_host(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown worker {sys.argv[1]!r}")
