"""The family interface: what a model family module gives the loaders, the exporter and the engine.

A family is a module (``zojax.models.llama``, ``zojax.models.opt``) registered with
:func:`zojax.models.register_family`; :class:`Family` writes down what it must provide. Modules
satisfy a Protocol structurally, so a type checker can verify a family with
``family: Family = zojax.models.opt``, and ``isinstance(module, Family)`` checks the names exist.

The checkpoint map (:func:`hf_param_map`) is a dict from HF tensor name to :class:`ParamSpec`;
:func:`copied`, :func:`transposed` and :func:`layer_specs` build one without restating the
layout rules per family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np

from zojax.layout import HF_PROJECTIONS, Projections

__all__ = [
    "Family",
    "FamilyConfig",
    "FamilyModel",
    "ParamMap",
    "ParamSpec",
    "copied",
    "layer_specs",
    "linear_specs",
    "norm_specs",
    "projections",
    "sharding_rules",
    "stacked_paths",
    "transposed",
]


class ParamSpec(NamedTuple):
    """Where one HF tensor lives in zojax's state.

    Attributes:
      path: key path into ``nnx.split(model)[1]``, e.g. ``("layers", "mlp", "up_proj", "kernel")``.
      layer: index into the leading stacked axis, or None for unstacked params.
      to_zojax: HF array (numpy) -> zojax layout (one layer's slice).
      to_hf: inverse.
    """

    path: tuple[str, ...]
    layer: int | None
    to_zojax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


# An HF checkpoint's tensor names -> where each lives in zojax's state.
ParamMap = dict[str, ParamSpec]


def _identity(x):
    return x


def _transpose(x):
    # torch Linear stores (d_out, d_in); zojax kernels are (d_in, d_out).
    return x.T


def copied(path: tuple[str, ...], layer: int | None = None) -> ParamSpec:
    """A tensor stored in the same layout by HF and zojax (embeddings, norms, biases)."""
    return ParamSpec(path, layer, _identity, _identity)


def transposed(path: tuple[str, ...], layer: int | None = None) -> ParamSpec:
    """A torch ``Linear`` weight: HF ``(d_out, d_in)``, zojax kernel ``(d_in, d_out)``."""
    return ParamSpec(path, layer, _transpose, _transpose)


def linear_specs(hf: str, path: tuple[str, ...], layer: int | None = None, *, bias: bool) -> ParamMap:
    """HF ``{hf}.weight`` (and ``{hf}.bias``) of a linear whose params live under ``path``."""
    out = {hf + ".weight": transposed((*path, "kernel"), layer)}
    if bias:
        out[hf + ".bias"] = copied((*path, "bias"), layer)
    return out


def norm_specs(hf: str, path: tuple[str, ...], layer: int | None = None, *, bias: bool) -> ParamMap:
    """HF ``{hf}.weight`` (and ``{hf}.bias``) of a norm: zojax calls the weight ``scale``."""
    out = {hf + ".weight": copied((*path, "scale"), layer)}
    if bias:
        out[hf + ".bias"] = copied((*path, "bias"), layer)
    return out


def layer_specs(
    hf_layer: str,
    num_layers: int,
    *,
    linears: Iterable[tuple[tuple[str, ...], bool]],
    norms: Iterable[tuple[tuple[str, ...], bool]],
) -> ParamMap:
    """The specs of every stacked decoder layer (zojax path ``layers/...``, one slice per layer).

    Args:
      hf_layer: the HF name of layer ``i`` as a format string, e.g. ``"model.layers.{}"``.
      num_layers: how many layers.
      linears: ``(parts, has_bias)`` per linear; ``parts`` is both the dotted HF name below the
        layer and the zojax path below ``layers``.
      norms: ``(parts, has_bias)`` per norm, likewise.

    >>> sorted(layer_specs("h.{}", 1, linears=[(("fc",), True)], norms=[(("ln",), False)]))
    ['h.0.fc.bias', 'h.0.fc.weight', 'h.0.ln.weight']
    """
    linears, norms = list(linears), list(norms)
    out: ParamMap = {}
    for i in range(num_layers):
        for make, entries in ((linear_specs, linears), (norm_specs, norms)):
            for parts, bias in entries:
                out.update(make(f"{hf_layer.format(i)}.{'.'.join(parts)}", ("layers", *parts), i, bias=bias))
    return out


# --- the interface ------------------------------------------------------------------------------


class FamilyConfig(Protocol):
    """A family's hyperparameters: a frozen (hashable) dataclass mirroring the HF config."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    tie_word_embeddings: bool

    @property
    def num_key_value_heads(self) -> int: ...

    @property
    def head_dim(self) -> int: ...

    @classmethod
    def from_hf(cls, hf_config: Any) -> FamilyConfig: ...

    def to_hf(self) -> Any: ...


class FamilyModel(Protocol):
    """A family's Flax NNX model (see :class:`zojax.models.decoder.CausalLM`)."""

    # Regex over param paths (``zojax.paths.path_str`` of ``nnx.state(model, nnx.Param)``,
    # ``re.search``) that matches exactly the leaves with a leading stacked-layer axis.
    stacked_paths: ClassVar[str]
    config: Any
    dtype: Any

    def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> dict[str, jax.Array]: ...

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, **options: Any): ...


@runtime_checkable
class Family(Protocol):
    """What a model family module provides.

    Attributes:
      ARCHITECTURES: HF ``architectures`` names it loads (matched first by the loader).
      MODEL_TYPES: HF ``model_type`` values it loads.
      Config: its :class:`FamilyConfig` class.
      Model: its :class:`FamilyModel` class, built as ``Model(config, dtype=, param_dtype=, rngs=)``;
        its ``stacked_paths`` regex names the params with a leading stacked-layer axis
        (:func:`stacked_paths`), its ``projections`` the attention and MLP projections
        (:func:`projections`: the lora scope and the tensor-parallel split).
      apply: the forward as a pure function of the param dict (``Model.apply``).

    >>> from zojax.models import llama, opt
    >>> isinstance(llama, Family) and isinstance(opt, Family)
    True
    """

    ARCHITECTURES: tuple[str, ...]
    MODEL_TYPES: tuple[str, ...]
    Config: type[FamilyConfig]
    Model: type[FamilyModel]

    def hf_param_map(self, config: Any) -> ParamMap:
        """Each HF tensor name of a ``config``-shaped checkpoint -> its :class:`ParamSpec`."""
        ...

    # The forward as a pure function of the nested param dict: ``apply(config, params,
    # input_ids, attention_mask=None, *, positions, logits_positions, logits_tokens, cache,
    # dtype)``, as zojax.models.decoder.CausalLM.apply.
    apply: Callable[..., Any]


def stacked_paths(model: Any) -> str | None:
    """The regex naming the params with a leading stacked-layer axis, as the model declares it.

    ``model`` is a family model, its class, or a family module. Paths are those of
    :func:`zojax.paths.path_str` over ``nnx.state(model, nnx.Param)`` (e.g.
    ``layers/self_attn/q_proj/kernel``); a leaf is stacked iff ``re.search(regex, path)``. Returns
    None for a model that declares nothing (then no leaf should be taken as stacked).

    >>> from zojax.models import llama
    >>> stacked_paths(llama)
    '^layers/'
    >>> import re
    >>> bool(re.search(stacked_paths(llama), "layers/mlp/up_proj/kernel"))
    True
    """
    model = getattr(model, "Model", model)  # a family module names its model class
    return getattr(model, "stacked_paths", None)


def projections(model: Any) -> Projections | None:
    """The attention and MLP projections a model declares (:class:`zojax.layout.Projections`),
    or None. ``model`` is a family model, its class, or a family module.

    >>> from zojax.models import opt
    >>> projections(opt).lora_scope
    '(^|/)(q_proj|k_proj|v_proj|fc1|out_proj|fc2)/kernel$'
    """
    model = getattr(model, "Model", model)
    return getattr(model, "projections", None)


def sharding_rules(model: Any) -> tuple[tuple[str, int], ...]:
    """The tensor-parallel rules (:func:`zojax.parallel.param_spec`) of a model's declared
    projections; Hugging Face's names (:data:`zojax.parallel.DEFAULT_RULES`) if it declares none."""
    return (projections(model) or HF_PROJECTIONS).sharding_rules
