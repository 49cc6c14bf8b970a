"""Prompt templates and verbalizers, as in MeZO (``princeton-nlp/MeZO``, ``large_models/templates.py``).

A template turns one example (a plain dict) into a prompt and one full text per option. The scored
continuation of option ``i`` is what ``verbalize(ex, i)`` adds after ``encode(ex)``; the encoder finds
those tokens the way MeZO does (token count of the full text minus that of the prompt), so a verbalizer
may be any string, one token or many.

Conventions kept from MeZO: ``render`` strips spaces (not newlines) at both ends of the prompt and of
every full text, then leading whitespace (MeZO's ``encode_prompt`` with zero demonstrations). Labels are
option indices. Where MeZO used string candidates, the option order here is chosen so the index equals
the dataset's own label: BoolQ options are ``("No", "Yes")`` with label ``int(answer)``; COPA options are
``(choice1, choice2)`` with the SuperGLUE label.

>>> t = get_template("sst2")
>>> t.render({"sentence": "a gorgeous film ", "label": 1})
('a gorgeous film It was', ['a gorgeous film It was terrible', 'a gorgeous film It was great'])
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "TEMPLATES",
    "BoolQTemplate",
    "CBTemplate",
    "CopaTemplate",
    "LMTemplate",
    "MultiRCTemplate",
    "PromptTemplate",
    "RTETemplate",
    "SST2Template",
    "Template",
    "WICTemplate",
    "WSCTemplate",
    "get_template",
]

Example = Mapping[str, Any]


class Template:
    """Base class: subclasses define ``encode``, ``verbalize`` and the option set.

    ``fields`` names the example keys the template reads (checked by the loaders); ``verbalizer`` is the
    fixed option list, or ``None`` when options come from the example (``options`` is then overridden).
    """

    name: str = "template"
    fields: tuple[str, ...] = ()
    verbalizer: tuple[str, ...] | None = None

    def encode(self, ex: Example) -> str:
        """The prompt, without any option."""
        raise NotImplementedError

    def verbalize(self, ex: Example, option: int) -> str:
        """The prompt followed by option ``option``."""
        raise NotImplementedError

    def options(self, ex: Example) -> list[str]:
        """The option strings (verbalizer words, or per-example choices)."""
        assert self.verbalizer is not None, f"{type(self).__name__} must override options()"
        return list(self.verbalizer)

    def num_options(self, ex: Example) -> int:
        return len(self.options(ex))

    def label(self, ex: Example) -> int:
        """The index of the correct option."""
        return int(ex["label"])

    def render(self, ex: Example) -> tuple[str, list[str]]:
        """``(prompt, [full text per option])`` after MeZO's whitespace handling."""
        prompt = self.encode(ex).strip(" ").lstrip()
        fulls = [self.verbalize(ex, i).strip(" ").lstrip() for i in range(self.num_options(ex))]
        return prompt, fulls

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclasses.dataclass(frozen=True, repr=False)
class PromptTemplate(Template):
    """A user template: ``prompt`` is a ``str.format`` string over the example's fields and option ``i`` is
    appended as ``sep + verbalizer[i]``.

    >>> t = PromptTemplate("Review: {text}\\nSentiment:", ("negative", "positive"))
    >>> t.render({"text": "fine", "label": 0})[1]
    ['Review: fine\\nSentiment: negative', 'Review: fine\\nSentiment: positive']
    >>> t.fields
    ('text',)
    """

    prompt: str = "{sentence} It was"
    verbalizer: tuple[str, ...] = ("terrible", "great")
    sep: str = " "
    name: str = "custom"

    def __post_init__(self):
        import string

        names = tuple(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(self.prompt) if f))
        object.__setattr__(self, "verbalizer", tuple(self.verbalizer))
        object.__setattr__(self, "fields", names)

    def encode(self, ex):
        return self.prompt.format_map(ex)

    def verbalize(self, ex, option):
        return self.encode(ex) + self.sep + self.verbalizer[option]

    def __repr__(self):
        return f"PromptTemplate({self.prompt!r}, {self.verbalizer!r}, sep={self.sep!r})"


class SST2Template(Template):
    """MeZO SST-2: ``"<sentence> It was"`` + ``" terrible"`` (0) / ``" great"`` (1); also Rotten Tomatoes.

    >>> SST2Template().render({"sentence": "dull", "label": 0})
    ('dull It was', ['dull It was terrible', 'dull It was great'])
    """

    name = "sst2"
    fields = ("sentence",)
    verbalizer = ("terrible", "great")

    def encode(self, ex):
        return f"{ex['sentence'].strip()} It was"

    def verbalize(self, ex, option):
        return f"{ex['sentence'].strip()} It was {self.verbalizer[option]}"


class RTETemplate(Template):
    """MeZO RTE (PromptSource): label 0 = entailment = ``"Yes"``.

    >>> RTETemplate().render({"premise": "P.", "hypothesis": "H", "label": 0})[1][0]
    'P.\\nDoes this mean that "H" is true? Yes or No?\\nYes'
    """

    name = "rte"
    fields = ("premise", "hypothesis")
    verbalizer = ("Yes", "No")

    def encode(self, ex):
        return f'{ex["premise"]}\nDoes this mean that "{ex["hypothesis"]}" is true? Yes or No?\n'

    def verbalize(self, ex, option):
        return self.encode(ex) + self.verbalizer[option]


class CBTemplate(Template):
    """MeZO CB (PromptSource): 0 entailment ``"Yes"``, 1 contradiction ``"No"``, 2 neutral ``"Maybe"``.

    >>> CBTemplate().render({"premise": "P.", "hypothesis": "H", "label": 2})[0]
    'Suppose P. Can we infer that "H"? Yes, No, or Maybe?\\n'
    """

    name = "cb"
    fields = ("premise", "hypothesis")
    verbalizer = ("Yes", "No", "Maybe")

    def encode(self, ex):
        return f'Suppose {ex["premise"]} Can we infer that "{ex["hypothesis"]}"? Yes, No, or Maybe?\n'

    def verbalize(self, ex, option):
        return self.encode(ex) + self.verbalizer[option]


class BoolQTemplate(Template):
    """MeZO BoolQ (its default, ``BoolQTemplateV3``): ``"<passage> <Question>?\\n"`` + ``"No"``/``"Yes"``.

    The label is ``int(answer)`` (1 = ``"Yes"``), the SuperGLUE convention; a ``bool`` ``answer`` field
    (the ``google/boolq`` layout) is accepted too.

    >>> BoolQTemplate().render({"passage": "P.", "question": "is it", "answer": True})
    ('P. Is it?\\n', ['P. Is it?\\nNo', 'P. Is it?\\nYes'])
    >>> BoolQTemplate().label({"passage": "P.", "question": "is it", "answer": True})
    1
    """

    name = "boolq"
    fields = ("passage", "question")
    verbalizer = ("No", "Yes")

    def encode(self, ex):
        q = ex["question"]
        if not q.endswith("?"):
            q = q + "?"
        q = q[0].upper() + q[1:]
        return f"{ex['passage']} {q}\n"

    def verbalize(self, ex, option):
        return self.encode(ex) + self.verbalizer[option]

    def label(self, ex):
        return int(ex["label"]) if "label" in ex else int(bool(ex["answer"]))


class WSCTemplate(Template):
    """MeZO WSC (``wsc.fixed``, PromptSource): 0 ``"No"``, 1 ``"Yes"``.

    >>> WSCTemplate().encode({"text": "T.", "span1_text": "Bob", "span2_text": "He"})
    'T.\\nIn the previous sentence, does the pronoun "he" refer to Bob? Yes or No?\\n'
    """

    name = "wsc"
    fields = ("text", "span1_text", "span2_text")
    verbalizer = ("No", "Yes")

    def encode(self, ex):
        return (
            f'{ex["text"]}\nIn the previous sentence, does the pronoun "{ex["span2_text"].lower()}" '
            f"refer to {ex['span1_text']}? Yes or No?\n"
        )

    def verbalize(self, ex, option):
        return self.encode(ex) + self.verbalizer[option]


class WICTemplate(Template):
    """MeZO WiC (PromptSource): 0 ``"No"``, 1 ``"Yes"``.

    >>> WICTemplate().encode({"word": "bank", "sentence1": "A.", "sentence2": "B."})
    'Does the word "bank" have the same meaning in these two sentences? Yes, No?\\nA.\\nB.\\n'
    """

    name = "wic"
    fields = ("word", "sentence1", "sentence2")
    verbalizer = ("No", "Yes")

    def encode(self, ex):
        return (
            f'Does the word "{ex["word"]}" have the same meaning in these two sentences? Yes, No?\n'
            f"{ex['sentence1']}\n{ex['sentence2']}\n"
        )

    def verbalize(self, ex, option):
        return self.encode(ex) + self.verbalizer[option]


class MultiRCTemplate(Template):
    """MeZO MultiRC (PromptSource): 0 ``"No"``, 1 ``"Yes"``.

    >>> MultiRCTemplate().encode({"paragraph": "P.", "question": "Q?", "answer": "A"})
    'P.\\nQuestion: Q?\\nI found this answer "A". Is that correct? Yes or No?\\n'
    """

    name = "multirc"
    fields = ("paragraph", "question", "answer")
    verbalizer = ("No", "Yes")

    def encode(self, ex):
        return (
            f"{ex['paragraph']}\nQuestion: {ex['question']}\n"
            f'I found this answer "{ex["answer"]}". Is that correct? Yes or No?\n'
        )

    def verbalize(self, ex, option):
        return self.encode(ex) + self.verbalizer[option]


class CopaTemplate(Template):
    """MeZO COPA: ``premise`` without its final period, then ``" so "`` (effect) or ``" because "`` (cause),
    then the choice with its first word lower-cased unless it is ``"I"``. Options are per example.

    >>> ex = {"premise": "The man fell.", "question": "cause", "choice1": "He slipped.",
    ...       "choice2": "I pushed him.", "label": 0}
    >>> CopaTemplate().render(ex)
    ('The man fell because', ['The man fell because he slipped.', 'The man fell because I pushed him.'])
    """

    name = "copa"
    fields = ("premise", "question", "choice1", "choice2")

    def _prompt(self, ex):
        premise = ex["premise"].rstrip().removesuffix(".")
        if ex["question"] == "effect":
            conj = " so "
        elif ex["question"] == "cause":
            conj = " because "
        else:
            raise ValueError(f"COPA question must be 'cause' or 'effect', got {ex['question']!r}")
        return premise + conj

    @staticmethod
    def _capitalize(c):
        words = c.split(" ")
        if words[0] != "I":
            words[0] = words[0].lower()
        return " ".join(words)

    def options(self, ex):
        return [ex["choice1"], ex["choice2"]]

    def encode(self, ex):
        return self._prompt(ex)

    def verbalize(self, ex, option):
        return self._prompt(ex) + self._capitalize(self.options(ex)[option])


class LMTemplate(Template):
    """Plain causal language modelling on ``text`` (MeZO's ``LMTemplate``): no prompt, one "option", the
    text itself. Encode it with :func:`zojax.tasks.encode_lm` rather than as a classification task.

    >>> LMTemplate().render({"text": "Hello world"})
    ('', ['Hello world'])
    """

    name = "lm"
    fields = ("text",)

    def options(self, ex):
        return [ex["text"]]

    def encode(self, ex):
        return ""

    def verbalize(self, ex, option):
        return ex["text"]

    def label(self, ex):
        return 0


TEMPLATES: dict[str, Template] = {
    "sst2": SST2Template(),
    "rotten_tomatoes": SST2Template(),
    "rte": RTETemplate(),
    "cb": CBTemplate(),
    "boolq": BoolQTemplate(),
    "wsc": WSCTemplate(),
    "wic": WICTemplate(),
    "multirc": MultiRCTemplate(),
    "copa": CopaTemplate(),
    "lm": LMTemplate(),
}


def get_template(name: str | Template, verbalizer: Sequence[str] | None = None) -> Template:
    """The template registered as ``name`` (case-insensitive), or ``name`` itself if it is a Template.

    ``verbalizer`` replaces a fixed-option template's words (same number of options), e.g. to try
    ``("bad", "good")`` on SST-2.

    >>> get_template("SST2", verbalizer=["bad", "good"]).render({"sentence": "x"})[1]
    ['x It was bad', 'x It was good']
    """
    if isinstance(name, Template):
        t = name
    else:
        key = name.lower().replace("-", "_")
        if key not in TEMPLATES:
            raise KeyError(f"unknown task template {name!r}; known: {sorted(TEMPLATES)}")
        t = TEMPLATES[key]
    if verbalizer is not None:
        if t.verbalizer is None:
            raise ValueError(f"{t!r} takes its options from each example; a verbalizer does not apply")
        if len(verbalizer) != len(t.verbalizer):
            raise ValueError(f"{t!r} has {len(t.verbalizer)} options, got verbalizer {list(verbalizer)}")
        if dataclasses.is_dataclass(t):
            t = dataclasses.replace(t, verbalizer=tuple(verbalizer))
        else:
            # a copy, so the registry's shared instance keeps MeZO's words
            t = copy.copy(t)
            t.verbalizer = tuple(verbalizer)
    return t
