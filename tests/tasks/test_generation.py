"""The reward objective: generation inside the compiled population program equals a per-member Python
reference, and its samples are a pure function of (run key, step, member, prompt)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zojax.directions import LowRank, draw_directions
from zojax.models import from_pretrained
from zojax.models.generate import stop_tokens
from zojax.scope import combine, partition
from zojax.scoring import Member, ZOSpec, perturb, score
from zojax.tasks import generation as gen
from zojax.tasks import rewards

from ..tiny_assets import make_char_assets


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_char_assets(tmp_path_factory.mktemp("char"))
    model, _, tok = from_pretrained(str(root / "model"))
    graphdef, params = nnx.split(model)
    examples = rewards.arithmetic_examples(8, seed=0)
    eos, pad = stop_tokens(model, tok)
    enc = gen.encode_prompts(examples, tok, pad=pad)
    sampling = gen.Sampling(samples=2, max_new_tokens=3, temperature=1.0, eos=eos, pad=pad)
    # a host reward that reads the text and the example: the sampled characters' codes, plus the answer
    reward = gen.host_reward(lambda text, ex: sum(map(ord, text)) / 100 + ex["answer"] / 1000, examples, tok, eos)
    return graphdef, params, enc, sampling, reward


def test_population_program_equals_a_per_member_reference(setup):
    graphdef, params, enc, sampling, reward = setup
    loss = gen.reward_loss(graphdef, sampling, reward)
    spec = ZOSpec(noise=LowRank(rank=1, refresh_every=1), eps=0.5, members=2, adapter=True)
    batch = gen.prompt_batch(enc, [1, 4])
    key, step = jax.random.PRNGKey(7), 3
    program = jax.jit(lambda p, b: score(loss, p, b, key, step, spec))
    losses = np.asarray(program(params, batch))
    assert np.array_equal(losses, np.asarray(program(params, batch)))  # replays bitwise
    trainable, frozen = partition(params, spec.scope, spec.noise)
    one = jax.jit(loss)  # one member at a time, weights formed: a separate program
    reference = np.zeros((2, 2), np.float32)
    for m in range(2):
        dirs = draw_directions(trainable, spec.noise, key, step, m)
        for s, sign in enumerate((1.0, -1.0)):
            p = combine(perturb(trainable, dirs, sign * spec.eps, spec.noise, adapter=False), frozen)
            reference[m, s] = one(p, batch, Member(key, jnp.asarray(step), jnp.asarray(m)))
    np.testing.assert_allclose(losses, reference, rtol=1e-6)
    assert len(np.unique(losses)) > 1  # members and signs differ: the test could fail


def test_completion_keys_depend_on_member_step_and_prompt_only():
    member = Member(jax.random.PRNGKey(0), jnp.asarray(2), jnp.asarray(1))
    keys = gen.completion_keys(member, jnp.array([5, 9]), 2)
    again = gen.completion_keys(member, jnp.array([9]), 2)  # prompt 9 alone: its keys are the same
    assert np.array_equal(jax.random.key_data(keys[2:]) if keys.dtype != jnp.uint32 else keys[2:], again)
    other = gen.completion_keys(member._replace(number=jnp.asarray(0)), jnp.array([5, 9]), 2)
    later = gen.completion_keys(member._replace(step=jnp.asarray(3)), jnp.array([5, 9]), 2)
    assert len({np.asarray(k).tobytes() for k in (*keys, *other, *later)}) == 12
