"""zojax.tasks.templates: MeZO's prompts and verbalizers, overrides and their errors."""

from __future__ import annotations

import pytest

from zojax import tasks as T
from zojax.tasks import templates as tpl

from .toy_lm import COPA


def test_templates_render_as_mezo():
    # expected strings written from MeZO's large_models/templates.py f-strings, then .strip(" ")
    ex = {"sentence": " it 's a charming journey . ", "label": 1}
    assert tpl.SST2Template().render(ex) == (
        "it 's a charming journey . It was",
        ["it 's a charming journey . It was terrible", "it 's a charming journey . It was great"],
    )
    assert T.get_template("rotten_tomatoes").render(ex) == T.get_template("sst2").render(ex)

    rte = {"premise": "Dana lives in Paris.", "hypothesis": "Dana lives in France", "label": 0}
    p, f = T.get_template("rte").render(rte)
    assert p == 'Dana lives in Paris.\nDoes this mean that "Dana lives in France" is true? Yes or No?\n'
    assert f == [p + "Yes", p + "No"]

    cb = {"premise": "It rained.", "hypothesis": "It was wet", "label": 2}
    p, f = T.get_template("cb").render(cb)
    assert p == 'Suppose It rained. Can we infer that "It was wet"? Yes, No, or Maybe?\n'
    assert f == [p + "Yes", p + "No", p + "Maybe"]

    bq = {"passage": "Water boils at 100 C.", "question": "does water boil at 100 c", "label": 1}
    p, f = T.get_template("boolq").render(bq)
    assert p == "Water boils at 100 C. Does water boil at 100 c?\n"
    assert f == [p + "No", p + "Yes"] and T.get_template("boolq").label(bq) == 1

    wsc = {"text": "Mark told Pete he was late.", "span1_text": "Pete", "span2_text": "He", "label": 1}
    p, f = T.get_template("wsc").render(wsc)
    assert p == (
        'Mark told Pete he was late.\nIn the previous sentence, does the pronoun "he" refer to Pete? '
        "Yes or No?\n"
    )
    assert f == [p + "No", p + "Yes"]

    wic = {"word": "bank", "sentence1": "A river bank.", "sentence2": "A bank loan.", "label": 0}
    p, _ = T.get_template("wic").render(wic)
    assert p == (
        'Does the word "bank" have the same meaning in these two sentences? Yes, No?\n'
        "A river bank.\nA bank loan.\n"
    )

    mrc = {"paragraph": "Sam ate.", "question": "Who ate?", "answer": "Sam", "label": 1}
    p, f = T.get_template("multirc").render(mrc)
    assert p == 'Sam ate.\nQuestion: Who ate?\nI found this answer "Sam". Is that correct? Yes or No?\n'
    assert f[1] == p + "Yes"

    p, f = T.get_template("copa").render(COPA[0])
    assert p == "The man broke his toe because"
    assert f == [
        "The man broke his toe because he dropped a hammer on his foot.",
        "The man broke his toe because he got a hole in his sock.",
    ]
    p, f = T.get_template("copa").render(COPA[1])
    assert p == "I poured water on my sleeping friend so"
    assert f == [
        "I poured water on my sleeping friend so my friend awoke.",
        "I poured water on my sleeping friend so I awoke.",
    ]  # "I" keeps its capital

    assert T.get_template("lm").render({"text": "hello"}) == ("", ["hello"])


def test_template_overrides_and_errors():
    t = T.get_template("sst2", verbalizer=("bad", "good"))
    assert t.render({"sentence": "x"})[1] == ["x It was bad", "x It was good"]
    assert T.get_template("sst2").verbalizer == ("terrible", "great")  # the registry is untouched
    with pytest.raises(ValueError, match="2 options"):
        T.get_template("sst2", verbalizer=("a", "b", "c"))
    with pytest.raises(ValueError, match="per example|each example"):
        T.get_template("copa", verbalizer=("a", "b"))
    with pytest.raises(KeyError, match="known"):
        T.get_template("nope")
    pt = T.PromptTemplate("{title}: {body} Verdict:", ("no", "yes"))
    assert pt.fields == ("title", "body")
    assert pt.render({"title": "T", "body": "B"}) == (
        "T: B Verdict:",
        ["T: B Verdict: no", "T: B Verdict: yes"],
    )
