"""Sphinx configuration of docs/api.md: autodoc + napoleon, written as Markdown by sphinx-markdown-builder.

Build (tests/project/test_docs.py checks that the committed file is current)::

    python -m sphinx -b markdown -E -q -d /tmp/zojax-doctrees docs/sphinx docs

What the page holds is docs/sphinx/api.rst. Besides the settings, this file adds two small things Sphinx
does not do on its own: a one-line description of undocumented constants (no values: they can hold local
paths or unordered sets), and the ``zojax-cli`` directive that tabulates the command line from its
argparse parser (argparse's own help text changes between Python versions).
"""

from __future__ import annotations

import argparse
import inspect
import typing
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective

project = "zojax"
root_doc = "api"
exclude_patterns = ["_build"]
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx_markdown_builder"]

autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "no-value": True,
    "exclude-members": "model_config, model_fields, model_computed_fields",
}
autodoc_preserve_defaults = True  # defaults as written in the source, never a repr with an address
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "mixed"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
smartquotes = False
markdown_anchor_signatures = True  # <a id="zojax.ZOSpec"></a>: the links between entries work on GitHub
markdown_anchor_sections = True
markdown_flavor = "github"

# Submodules listed in zojax.__all__: their names that zojax itself exports are documented once, under zojax.
_SUBMODULES = ("zojax.estimators", "zojax.nn", "zojax.directions", "zojax.scope", "zojax.paths")


def _skip_member(app, what, name, obj, skip, options):
    if what != "module":
        return None  # class members: autodoc's default (those with a docstring)
    module = app.env.temp_data.get("autodoc:module") or ""
    if module in _SUBMODULES:
        import zojax

        if name in zojax.__all__ and getattr(zojax, name) is obj:
            return True
    return False  # every name in a module's __all__, with or without a docstring


def _is_alias(obj) -> bool:
    return typing.get_origin(obj) is not None  # Union[...], list[int], ...


def _is_data(obj) -> bool:
    return _is_alias(obj) or not (inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj))


def _process_docstring(app, what, name, obj, options, lines):
    if what == "module":
        # automodule skips module-level data without a "#:" comment in that very module (re-exported
        # constants, say): document the rest of __all__ explicitly
        documented = ModuleAnalyzer.for_module(name).find_attr_docs()
        for member in getattr(obj, "__all__", []):
            if _is_data(getattr(obj, member)) and ("", member) not in documented:
                lines += ["", f".. autodata:: {name}.{member}"]
        return
    if what != "data":
        return
    first = next((line.strip() for line in lines if line.strip()), None)
    if first is not None and first != inspect.cleandoc(type(obj).__doc__ or "").partition("\n")[0].strip():
        return  # a doc-comment of its own, not its type's docstring
    lines.clear()
    if _is_alias(obj):
        members = " | ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(obj))
        lines.append(f"Type alias: ``{members}``.")
    elif isinstance(obj, dict):
        lines.append(f"A ``dict`` with keys: {', '.join(f'``{k}``' for k in sorted(obj, key=str))}.")
    elif isinstance(obj, (set, frozenset)):
        lines.append(f"A ``{type(obj).__name__}``: {', '.join(f'``{v}``' for v in sorted(obj, key=str))}.")
    elif isinstance(obj, Path):
        lines.append(f"The path of the packaged ``{obj.name}``.")
    else:
        lines.append(f"``{obj!r}``")


def _cell(text) -> str:
    return " ".join(str(text or "").split())


def _argument(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"``{action.metavar or action.dest}``" + (" ..." if action.nargs in ("*", "+") else "")
    meta = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
    return ", ".join(f"``{o}{meta}``" for o in sorted(action.option_strings, key=lambda o: (-len(o), o)))


class ZojaxCLI(SphinxDirective):
    """The ``zojax`` command line: one section per command, one table per argument group."""

    def run(self):
        from zojax import cli
        from zojax.config import describe

        parser = cli._parser()
        (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        rst = [_cell(parser.description), ""]
        for name, sub in commands.choices.items():
            title = f"``zojax {name}``"
            rst += [title, "~" * len(title), "", _cell(sub.description), ""]
            for group in sub._action_groups:
                actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
                if not actions:
                    continue
                rst += [f".. list-table:: {group.title}", "   :header-rows: 1", ""]
                rst += ["   * - argument", "     - description"]
                for a in actions:
                    required = " (required)" if a.required and a.option_strings else ""
                    rst += [f"   * - {_argument(a)}", f"     - {_cell(a.help)}{required}"]
                rst.append("")
        title = "Configuration keys"
        rst += [title, "~" * len(title), ""]
        rst += ["The sections and keys of a YAML config (``zojax train --help`` lists them too)::", ""]
        rst += ["   " + line if line else "" for line in describe().splitlines()]
        return self.parse_text_to_nodes("\n".join(rst), allow_section_headings=True)


def _markdown_translator():
    from sphinx_markdown_builder.translator import MarkdownTranslator

    class Translator(MarkdownTranslator):
        # sphinx-markdown-builder 0.6.11 drops the abbreviation node that holds the "*" before keyword-only
        # parameters (liran-funaro/sphinx-markdown-builder#42): write its text
        def visit_abbreviation(self, node):
            pass

        def depart_abbreviation(self, node):
            pass

    return Translator


def setup(app):
    app.set_translator("markdown", _markdown_translator())
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("autodoc-process-docstring", _process_docstring)
    app.add_directive("zojax-cli", ZojaxCLI)
    return {"parallel_read_safe": True}
