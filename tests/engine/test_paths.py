"""zojax.paths: every leaf has its own name and key."""

import jax
import jax.numpy as jnp
import pytest

import zojax
from zojax.paths import path_hash

KEY = jax.random.PRNGKey(3)


def test_colliding_leaf_names_are_refused():
    params = {"a/b": jnp.zeros(2), "a": {"b": jnp.ones(2)}}
    with pytest.raises(ValueError, match="same path name 'a/b'"):
        zojax.init(params, zojax.ZOSpec(), zojax.zo_sgd(0.1), KEY)
    with pytest.raises(ValueError, match="same path name"):
        zojax.partition(params)


def test_leaf_keys_do_not_collide_over_many_realistic_names():
    names = [f"model/layers/{i}/block_{j}/proj_{k}/kernel" for i in range(100) for j in range(40) for k in range(25)]
    assert len({path_hash(n) for n in names}) == len(names)  # 100k names; crc32 & 0x7fffffff collided here
