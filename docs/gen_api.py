"""Generate docs/api.md, the API reference, from zojax's public names and docstrings.

    python docs/gen_api.py            # rewrite docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md is stale

What is documented: ``zojax.__all__`` (including the public submodules ``nn``, ``noise``,
``estimators``), ``zojax.models.__all__``, ``zojax.tasks.__all__``, ``zojax.train.__all__``,
``zojax.config.__all__`` and the ``zojax`` command line's ``--help``. Signatures come from
:func:`inspect.signature`, text from the docstrings. The output is deterministic: default values
are formatted without memory addresses and the CLI help is rendered at a fixed width.
tests/test_docs.py regenerates it in memory and fails when the committed file differs.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import types
import typing
from pathlib import Path, PurePath

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "api.md"

# (module, title, one-line blurb) in the order they appear.
SECTIONS = [
    (
        "zojax",
        "Engine: `zojax`",
        "Directions, population scoring, estimators, optax-style updates, the fused step, seed logs.",
    ),
    (
        "zojax.models",
        "Models: `zojax.models`",
        "Load HF / GGUF checkpoints into zojax's Flax NNX models, export back, generate.",
    ),
    (
        "zojax.tasks",
        "Tasks: `zojax.tasks`",
        "Prompt templates, data sources and splits, static-shape batches, objectives.",
    ),
    (
        "zojax.train",
        "Trainer: `zojax.train`",
        "The pipeline behind `zojax train`: fused steps, evaluation, logs, checkpoints.",
    ),
    (
        "zojax.config",
        "Configuration: `zojax.config`",
        "YAML run configs validated into typed objects (all keys: see the CLI section).",
    ),
]


# --- formatting values and signatures ----------------------------------------------------------


def _qualname(obj) -> str:
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
    if module in ("builtins", ""):
        return name
    return f"{module}.{name}"


def format_default(value) -> str:
    """A stable text for a default value (never a memory address, never a machine's path)."""
    if value is inspect.Parameter.empty:
        return ""
    if isinstance(value, PurePath):
        import zojax

        package_parent = Path(zojax.__file__).resolve().parent.parent
        try:
            return f"<installed>/{Path(value).resolve().relative_to(package_parent).as_posix()}"
        except ValueError:
            return repr(value)
    if (
        inspect.isclass(value)
        or inspect.isfunction(value)
        or inspect.isbuiltin(value)
        or inspect.ismethod(value)
    ):
        return _qualname(value)
    if callable(value) and not dataclasses.is_dataclass(value) and " at 0x" in repr(value):
        return _qualname(type(value)) + "(...)"
    text = repr(value)
    if " at 0x" in text:  # any other object whose repr has an address
        return f"<{_qualname(type(value))}>"
    return text


def format_annotation(annotation) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    if inspect.isclass(annotation):
        return annotation.__name__ if annotation.__module__ == "builtins" else annotation.__qualname__
    text = inspect.formatannotation(annotation)
    return re.sub(r"ForwardRef\('([^']*)'\)", r"\1", text)


def format_signature(name: str, obj) -> str | None:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    parts = []
    seen_kwonly = False
    params = list(sig.parameters.values())
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and not seen_kwonly:
            parts.append("*")
            seen_kwonly = True
        if p.kind is p.VAR_POSITIONAL:
            seen_kwonly = True
            text = "*" + p.name
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + p.name
        else:
            text = p.name
        ann = format_annotation(p.annotation)
        if ann:
            text += f": {ann}"
        if p.default is not p.empty:
            text += (" = " if ann else "=") + format_default(p.default)
        parts.append(text)
        if p.kind is p.POSITIONAL_ONLY and (
            i + 1 == len(params) or params[i + 1].kind is not p.POSITIONAL_ONLY
        ):
            parts.append("/")
    ret = ""
    if sig.return_annotation is not sig.empty and not inspect.isclass(obj):
        ret = f" -> {format_annotation(sig.return_annotation)}"
    one_line = f"{name}({', '.join(parts)}){ret}"
    if len(one_line) <= 100:
        return one_line
    return f"{name}(\n" + "".join(f"    {p},\n" for p in parts) + f"){ret}"


# --- docstrings -> markdown ------------------------------------------------------------------

_SECTION_RE = re.compile(
    r"^(Args|Arguments|Returns|Yields|Raises|Attributes|Example|Examples|Note|Notes):\s*$"
)


def _rst_to_md(text: str) -> str:
    """Inline reST -> markdown: roles and double backticks."""
    text = re.sub(r":(?:class|func|meth|data|attr|mod|obj|exc):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def docstring_to_md(doc: str | None) -> str:
    """A Google-style docstring as markdown: doctests and ``::`` blocks fenced, Args/Returns as lists."""
    if not doc:
        return ""
    lines = doc.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(">>>"):
            indent = len(line) - len(line.lstrip())
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i].strip())
                i += 1
            out += ["```pycon", *block, "```"]
            continue
        if stripped.endswith("::") and not stripped.startswith(">>>"):
            head = stripped[:-2].rstrip()
            if head:
                out.append(_rst_to_md(head) + ":")
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            block = []
            base = None
            while i < len(lines) and (not lines[i].strip() or (len(lines[i]) - len(lines[i].lstrip())) > 0):
                if lines[i].strip() and base is None:
                    base = len(lines[i]) - len(lines[i].lstrip())
                block.append(lines[i][base or 0 :] if lines[i].strip() else "")
                i += 1
            while block and not block[-1]:
                block.pop()
            out += ["", "```", *block, "```", ""]
            continue
        m = _SECTION_RE.match(stripped)
        if m and (len(line) - len(line.lstrip())) == 0:
            out += ["", f"**{m.group(1)}:**", ""]
            i += 1
            items: list[str] = []
            item_indent = None
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > 0):
                cur = lines[i]
                if not cur.strip():
                    i += 1
                    if i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) == 0:
                        break
                    continue
                ind = len(cur) - len(cur.lstrip())
                if cur.strip().startswith(">>>"):
                    break
                if item_indent is None:
                    item_indent = ind
                entry = re.match(r"^([\w*., \[\]]+?)(\s*\([^)]*\))?:\s(.*)$", cur.strip())
                listed = m.group(1) in ("Args", "Arguments", "Attributes", "Raises")
                if ind == item_indent and entry and listed:
                    names = ", ".join(f"`{n.strip()}`" for n in entry.group(1).split(","))
                    items.append(f"- {names}{entry.group(2) or ''}: {_rst_to_md(entry.group(3))}")
                elif ind == item_indent and (not items or not listed):
                    items.append(_rst_to_md(cur.strip()))
                else:
                    items[-1] += " " + _rst_to_md(cur.strip())
                i += 1
            out += items + [""]
            continue
        out.append(_rst_to_md(line))
        i += 1
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text


# --- objects ---------------------------------------------------------------------------------


def _slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def _anchor(qualified: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "", qualified.lower().replace(".", ""))


def _is_pydantic(obj) -> bool:
    return inspect.isclass(obj) and any(c.__module__.startswith("pydantic") for c in obj.__mro__[1:])


def _class_members(cls) -> list[tuple[str, object]]:
    members = []
    for name, value in cls.__dict__.items():
        if name.startswith("_"):
            continue
        func = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
        if isinstance(value, property):
            if value.__doc__:
                members.append((name, value))
        elif inspect.isfunction(func) and func.__doc__:
            members.append((name, value))
    return members


def _is_type_alias(obj) -> bool:
    return typing.get_origin(obj) in (typing.Union, types.UnionType)


def _kind(obj) -> str:
    if _is_type_alias(obj):
        return "alias"
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "exception"
        return "class"
    if callable(obj):
        return "function"
    return "constant"


def _constant_md(obj) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(f"`{k}`" for k in sorted(obj, key=str))
        return f"A `dict` with keys: {keys}."
    if isinstance(obj, (list, tuple, set, frozenset)):
        return f"A `{type(obj).__name__}` of {len(obj)} items."
    return f"`{format_default(obj)}`"


def _own_doc(obj) -> str | None:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if (
        inspect.isclass(obj)
        and doc
        and dataclasses.is_dataclass(obj)
        and re.match(rf"^{obj.__name__}\(", doc)
    ):
        return None  # dataclass's auto-generated docstring
    if inspect.isclass(obj) and doc and issubclass(obj, tuple) and doc.startswith(f"{obj.__name__}("):
        return None  # NamedTuple's auto-generated docstring
    return inspect.cleandoc(doc) if doc else None


def render_object(qualified: str, name: str, obj, level: int = 3) -> list[str]:
    kind = _kind(obj)
    hashes = "#" * level
    out = [f'<a id="{_anchor(qualified)}"></a>', "", f"{hashes} `{qualified}`", ""]
    if kind == "constant":
        out += [_constant_md(obj), ""]
        return out
    if kind == "alias":
        members = " | ".join(
            a.__name__ if inspect.isclass(a) else format_annotation(a) for a in typing.get_args(obj)
        )
        out += [f"Type alias: `{name} = {members}`", ""]
        return out
    if kind in ("class", "exception") and _is_pydantic(obj):
        out += [f"*class* (pydantic model) `{name}`", ""]
    elif kind == "exception":
        bases = ", ".join(b.__name__ for b in obj.__bases__)
        out += [f"*exception* `{name}({bases})`", ""]
    else:
        sig = format_signature(name, obj)
        if sig is not None:
            label = "class " if kind == "class" else ""
            out += ["```python", f"{label}{sig}", "```", ""]
    doc = docstring_to_md(_own_doc(obj))
    if doc:
        out += [doc, ""]
    if kind == "class" and not _is_pydantic(obj):
        for member_name, member in _class_members(obj):
            if isinstance(member, property):
                out += [
                    f"- **`.{member_name}`** (property): {_rst_to_md(inspect.cleandoc(member.__doc__).splitlines()[0])}"
                ]
                continue
            func = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            sig = format_signature(member_name, func)
            if isinstance(member, classmethod) and sig:
                sig = sig.replace("(cls, ", "(").replace("(cls)", "()")
            elif sig:
                sig = sig.replace("(self, ", "(").replace("(self)", "()")
            first = docstring_to_md(inspect.cleandoc(func.__doc__))
            prefix = "classmethod " if isinstance(member, classmethod) else ""
            out += [f"- **`{prefix}.{sig or member_name}`**", ""]
            out += ["  " + line if line else "" for line in first.splitlines()] + [""]
        if out[-1] != "":
            out.append("")
    return out


def _module_doc(module) -> str:
    return docstring_to_md(inspect.getdoc(module))


def render_module(modname: str, title: str, blurb: str, documented: set[str]) -> list[str]:
    module = importlib.import_module(modname)
    out = [f"## {title}", "", blurb, ""]
    doc = _module_doc(module)
    if doc:
        out += [doc, ""]
    names = list(module.__all__)
    submodules = [n for n in names if inspect.ismodule(getattr(module, n))]
    for name in names:
        obj = getattr(module, name)
        if inspect.ismodule(obj):
            continue
        qualified = f"{modname}.{name}"
        documented.add(id(obj))
        out += render_object(qualified, name, obj)
    for name in submodules:
        sub = getattr(module, name)
        qualified = f"{modname}.{name}"
        out += [f'<a id="{_anchor(qualified)}"></a>', "", f"### Submodule `{qualified}`", ""]
        doc = _module_doc(sub)
        if doc:
            out += [doc, ""]
        extra, seen = [], []
        for member in getattr(sub, "__all__", []):
            obj = getattr(sub, member)
            if id(obj) in documented:
                seen.append(member)
                continue
            extra += render_object(f"{qualified}.{member}", member, obj, level=4)
        if seen:
            links = ", ".join(f"[`{m}`](#{_anchor(f'{modname}.{m}')})" for m in seen)
            out += [f"Also exported here (documented above): {links}.", ""]
        out += extra
    return out


# --- CLI ---------------------------------------------------------------------------------------
# Rendered from the argparse parser's actions rather than from argparse's own help text, whose
# layout changes between Python versions (3.13 reworded option lists) and with the terminal width.


def _parser():
    from zojax import cli

    return cli._parser()


def _subcommands(parser) -> dict:
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def _arg_text(action) -> str:
    import argparse

    if not action.option_strings:
        meta = action.metavar or action.dest
        return f"`{meta} ...`" if action.nargs in ("*", "+") else f"`{meta}`"
    takes_value = not isinstance(
        action,
        (
            argparse._StoreTrueAction,
            argparse._StoreFalseAction,
            argparse._StoreConstAction,
            argparse._HelpAction,
        ),
    )
    meta = (action.metavar or action.dest.upper()) if takes_value else ""
    longest = sorted(action.option_strings, key=lambda o: (-len(o), o))
    return ", ".join(f"`{o} {meta}`" if meta else f"`{o}`" for o in longest)


def _usage(prog: str, parser) -> str:
    import argparse

    parts = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            meta = action.metavar or action.dest
            parts.append(f"[{meta} ...]" if action.nargs == "*" else meta)
            continue
        text = _arg_text(action).split(", ")[0].strip("`")
        parts.append(text if action.required else f"[{text}]")
    options = [p for p in parts if p.lstrip("[").startswith("-")]
    positional = [p for p in parts if not p.lstrip("[").startswith("-")]
    lines, line = [], prog
    for part in options + positional:  # wrap at 100 columns, continuation lines indented
        if len(line) + 1 + len(part) > 100:
            lines.append(line)
            line = " " * (len(prog) + 1) + part
        else:
            line += " " + part
    return "\n".join(lines + [line])


def _cell(text) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")


def render_cli() -> list[str]:
    import argparse

    from zojax.config import describe

    parser = _parser()
    commands = _subcommands(parser)
    out = [
        "## Command line: `zojax`",
        "",
        _cell(parser.description),
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    out += [
        f"| [`zojax {name}`](#zojax-{name}) | {_cell(help_text)} |"
        for name, (_, help_text) in commands.items()
    ]
    out += [
        "",
        "Every command takes `--config FILE` and `key=value` overrides of any [configuration key](#configuration-keys).",
        "",
    ]
    for name, (sub, _) in commands.items():
        out += [
            f"### `zojax {name}`",
            "",
            "```text",
            _usage(f"zojax {name}", sub),
            "```",
            "",
            _cell(sub.description),
            "",
        ]
        for group in sub._action_groups:
            actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            out += [f"*{group.title}*", "", "| argument | description |", "|---|---|"]
            for a in actions:
                note = " (required)" if a.required and a.option_strings else ""
                out.append(f"| {_arg_text(a)} | {_cell(a.help)}{note} |")
            out.append("")
    out += [
        "### Configuration keys",
        "",
        "The sections and keys of a YAML config (`zojax train --help` prints the same list):",
        "",
    ]
    out += ["```text", describe(), "```", ""]
    return out


# --- the page ----------------------------------------------------------------------------------


def render() -> str:
    """The whole of docs/api.md as a string."""
    documented: set[int] = set()
    body: list[str] = []
    toc = ["## Contents", ""]
    for modname, title, blurb in SECTIONS:
        module = importlib.import_module(modname)
        toc.append(f"- [{title}](#{_slug(title)})")
        names = [n for n in module.__all__ if not inspect.ismodule(getattr(module, n))]
        subs = [n for n in module.__all__ if inspect.ismodule(getattr(module, n))]
        toc.append("  - " + ", ".join(f"[`{n}`](#{_anchor(f'{modname}.{n}')})" for n in names))
        if subs:
            toc.append(
                "  - submodules: "
                + ", ".join(f"[`{modname}.{n}`](#{_anchor(f'{modname}.{n}')})" for n in subs)
            )
        body += render_module(modname, title, blurb, documented)
    toc.append("- [Command line: `zojax`](#command-line-zojax)")
    toc.append(
        "  - "
        + ", ".join(f"[`zojax {c}`](#zojax-{c})" for c in _subcommands(_parser()))
        + ", [configuration keys](#configuration-keys)"
    )
    header = [
        "# zojax API reference",
        "",
        "<!-- Generated by docs/gen_api.py from the docstrings: do not edit by hand. -->",
        "<!-- Regenerate with: python docs/gen_api.py (tests/test_docs.py checks it is current). -->",
        "",
    ]
    text = "\n".join(header + toc + [""] + body + render_cli())
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run python docs/gen_api.py", file=sys.stderr)
            return 1
        print(f"{OUTPUT.relative_to(ROOT)} is up to date")
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
