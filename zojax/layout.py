"""What the engine reads from a model's parameter names: its projections.

A model's attention and MLP projections are the weights the ``lora`` scope trains (the seed
paper's "lora-only" scope) and the ones tensor parallelism splits (Megatron-style:
column-parallel on the output axis, row-parallel on the input axis). The names differ by
family, so a family declares them (``Model.projections``, see :mod:`zojax.models.family`) and
the engine derives both rules from that one declaration. :data:`HF_PROJECTIONS` is the
default for models that declare nothing: the projection names of Hugging Face's decoders.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["HF_PROJECTIONS", "Projections"]


class Projections(NamedTuple):
    """Names of a model's projection layers (the last path component before ``kernel``).

    >>> p = Projections(column=("q_proj", "up_proj"), row=("o_proj",))
    >>> p.lora_scope
    '(^|/)(q_proj|up_proj|o_proj)/kernel$'
    >>> p.sharding_rules[:2]
    (('(^|/)(q_proj|up_proj)/(kernel|bias)$', -1), ('(^|/)(o_proj)/kernel$', -2))
    """

    column: tuple[str, ...]  # output axis split across devices (q, k, v, gate, up, fc1)
    row: tuple[str, ...]  # input axis split (o, down, fc2); their bias stays replicated

    @property
    def lora_scope(self) -> str:
        """The regex of the projection kernels: the ``lora`` scope."""
        return rf"(^|/)({'|'.join(self.column + self.row)})/kernel$"

    @property
    def sharding_rules(self) -> tuple[tuple[str, int], ...]:
        """``(path regex, axis)`` rules for :func:`zojax.parallel.param_spec`: the projections,
        then token embeddings and the LM head on the vocabulary."""
        return (
            (rf"(^|/)({'|'.join(self.column)})/(kernel|bias)$", -1),
            (rf"(^|/)({'|'.join(self.row)})/kernel$", -2),
            (r"(^|/)embed_tokens/embedding$", -2),
            (r"(^|/)lm_head/kernel$", -1),
        )


#: Hugging Face's decoder projection names (Llama, Mistral, Qwen, OPT, GPT-NeoX-style fc1/fc2).
HF_PROJECTIONS = Projections(
    column=("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "fc1"),
    row=("o_proj", "out_proj", "down_proj", "fc2"),
)
