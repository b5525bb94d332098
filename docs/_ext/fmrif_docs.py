"""Sphinx extension: the parts of the docs that are generated, never written twice.

Directives:

``fmrif-command NAME``
    The reference of ``datalad NAME`` from DataLad's own command-line parser
    (the text ``datalad NAME --help`` shows): summary, usage, description and
    every option, as Sphinx ``program``/``option`` entries that other pages
    can link to with ``{option}`datalad fmrif-download --pseudonyms```.

``fmrif-transcript STEP``
    A command and what it printed, from ``docs/transcripts.py``'s run against
    the sandbox XNAT (``<fmrif_transcripts>/STEP.txt``).

``fmrif-messages``
    Its content lines are pieces of message text; it shows every message of
    datalad-fmrif (see ``fmrif_messages.py``) that contains one of them.

Checks, reported as warnings (``-W`` makes them errors):

- a message in the code that no ``fmrif-messages`` block shows;
- a ``fmrif-messages`` line that no message in the code contains any more;
- a transcript that is missing, or one written but shown on no page;
- a built page that shows an error box although Sphinx warned of nothing
  (Furo's red box on a ``.. contents::`` block, docutils' system messages).
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import ClassVar

import fmrif_messages
from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

WIDTH = 80  # columns of the usage line, as in a terminal


# -- command reference ------------------------------------------------------------------

_parsers = None


def _command_parsers() -> dict:
    """DataLad's argparse parsers of every command, extensions included."""
    global _parsers
    if _parsers is None:
        os.environ["COLUMNS"] = str(WIDTH)
        from datalad.cli.parser import setup_parser

        _parsers = setup_parser(["datalad", "--help"], return_subparsers=True)
    return _parsers


def _indent(text: str, prefix: str = "   ") -> list[str]:
    return [prefix + line if line.strip() else "" for line in
            textwrap.dedent(text).strip("\n").splitlines()]


def _literals(text: str) -> str:
    """`x` as the help writes it (like DataLad's own) -> ``x``, code in rST."""
    return re.sub(r"(?<![`\w])`([^`\n]+)`(?![`\w])", r"``\1``", text)


def _console_examples(lines: list[str]) -> list[str]:
    """DataLad's examples (``Text::`` and an indented ``% datalad ...``) as
    shell sessions: a ``$`` prompt and console highlighting, not Python's."""
    out: list[str] = []
    for n, line in enumerate(lines):
        following = next((x for x in lines[n + 1:] if x.strip()), "")
        if line.endswith("::") and following.lstrip().startswith("% "):
            text = line[:-2].rstrip()
            if text and text[-1] not in ".?!:":
                text += ":"
            out += [text, "", ".. code-block:: console"]
        elif line.lstrip().startswith("% "):
            out.append(line.replace("% ", "$ ", 1))
        else:
            out.append(line)
    return out


def command_rst(name: str) -> list[str]:
    """reStructuredText for ``datalad NAME``, from its parser."""
    parser = _command_parsers()[name]
    formatter = parser._get_formatter()
    program = f"datalad {name}"
    summary, _, description = textwrap.dedent(parser.description or "").strip() \
        .partition("\n")
    lines = [f".. _cmd-{name}:", "", program, "-" * len(program), "",
             summary.strip(), "", ".. code-block:: text", ""]
    lines += _indent(parser.format_usage().strip())
    lines += ["", *_console_examples(
        _literals(textwrap.dedent(description)).strip("\n").splitlines()), ""]
    lines += [".. rubric:: Options", "", f".. program:: {program}", ""]
    for action in parser._actions:
        if "--help" in action.option_strings:
            continue
        if action.option_strings:
            if action.nargs == 0:
                spec = ", ".join(action.option_strings)
            else:
                args = formatter._format_args(action, action.dest.upper())
                spec = ", ".join(f"{o} {args}" for o in action.option_strings)
        else:
            spec = formatter._format_args(action, action.dest)
        help_text = _literals(formatter._expand_help(action)) if action.help else ""
        lines += [f".. option:: {spec}", ""] + _indent(help_text) + [""]
    lines += [("Common options of every DataLad command (``-f json``, ``-c`` "
               "and others) are listed by ``datalad --help``."), ""]
    return lines


class CommandDirective(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self):
        name = self.arguments[0]
        try:
            rst = command_rst(name)
        except KeyError:
            logger.warning("fmrif-command: DataLad knows no command %r", name,
                           location=self.get_location())
            return []
        # parsed like autodoc's output: sections become part of the page
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(
            self.state, StringList(rst, source=f"<datalad {name} --help>"), node)
        return node.children


# -- transcripts ----------------------------------------------------------------------------


def _transcripts_dir(app) -> Path:
    return (Path(app.srcdir) / app.config.fmrif_transcripts).resolve()


class TranscriptDirective(SphinxDirective):
    required_arguments = 1
    has_content = False
    option_spec: ClassVar = {"caption": directives.unchanged}

    def run(self):
        step = self.arguments[0]
        path = _transcripts_dir(self.env.app) / f"{step}.txt"
        used = getattr(self.env, "fmrif_transcripts_used", set())
        used.add(step)
        self.env.fmrif_transcripts_used = used
        if not path.is_file():
            logger.warning(
                "fmrif-transcript: %s is missing; 'make docs' writes the "
                "transcripts (python docs/transcripts.py %s)", path,
                self.config.fmrif_transcripts, location=self.get_location())
            return []
        self.env.note_dependency(str(path))
        text = path.read_text(encoding="utf-8").rstrip("\n")
        block = nodes.literal_block(text, text, language="console")
        block["classes"].append("fmrif-transcript")
        self.set_source_info(block)
        if "caption" in self.options:
            caption = nodes.caption(self.options["caption"], self.options["caption"])
            container = nodes.container("", caption, block,
                                        classes=["literal-block-wrapper"])
            container["literal_block"] = True
            return [container]
        return [block]


# -- messages ------------------------------------------------------------------------------

_messages = None


def all_messages() -> list[fmrif_messages.Message]:
    global _messages
    if _messages is None:
        _messages = fmrif_messages.collect()
    return _messages


class MessagesDirective(SphinxDirective):
    has_content = True

    def run(self):
        patterns = [line.strip() for line in self.content if line.strip()]
        found = []
        for pattern in patterns:
            hits = [m for m in all_messages() if fmrif_messages.matches(pattern, m)]
            if not hits:
                logger.warning(
                    "fmrif-messages: no message in the code contains %r any "
                    "more; update or remove this entry", pattern,
                    location=self.get_location())
            found += [m for m in hits if m not in found]
        used = getattr(self.env, "fmrif_patterns", [])
        used += patterns
        self.env.fmrif_patterns = used
        # one item per text, however many places and ways it is given; the
        # module and kind are for maintainers (the build's warnings name
        # them), the page shows what a researcher sees
        items = nodes.bullet_list(classes=["fmrif-messages"])
        for text in dict.fromkeys(m.text for m in found):
            if not shown_words(text):
                continue  # nothing but values: the heading and cause say it
            para = nodes.paragraph(classes=["fmrif-message"])
            for literal, name in message_parts(text):
                if literal:
                    para += nodes.Text(literal)
                if name:
                    para += nodes.emphasis(name, name, classes=["fmrif-value"])
            items += nodes.list_item("", para)
        return [items] if items.children else []


_PLACEHOLDER = re.compile(r"<([^<>]*)>")


def message_parts(text: str) -> list[tuple[str, str]]:
    """A message template as (text, value) pairs: a value filled in at run
    time (``<server_url>``, ``<…>``) becomes a readable name (``server
    URL``, ``…``) that the page sets apart from the words around it."""
    parts = []
    last = 0
    for match in _PLACEHOLDER.finditer(text):
        parts.append((text[last:match.start()], _value_name(match.group(1))))
        last = match.end()
    parts.append((text[last:], ""))
    return parts


def _value_name(name: str) -> str:
    words = name.replace("_", " ").strip()
    if len(words) <= 1 or words == "…":
        return "…"
    words = re.sub(r"\bvar$", "variable", words)
    return re.sub(r"\b(url|id|md5)\b", lambda m: m.group(1).upper(), words)


def shown_words(text: str) -> str:
    """The words of a message that are not filled-in values."""
    return " ".join(re.findall(r"[A-Za-z]{3,}", _PLACEHOLDER.sub(" ", text)))


# -- checks --------------------------------------------------------------------------------


def _purge(app, env, docname):
    pass  # a full rebuild (-E) each time: nothing kept between builds


def _check(app, env):
    if "troubleshooting" not in env.found_docs:
        return
    patterns = getattr(env, "fmrif_patterns", [])
    unmatched, _ = fmrif_messages.coverage(all_messages(), [patterns])
    for message in unmatched:
        logger.warning(
            "troubleshooting: no entry for the message %r (%s, %s); add its "
            "text to a fmrif-messages block with cause and fix",
            message.text, message.kind, ", ".join(message.places),
            location="troubleshooting")
    folder = _transcripts_dir(app)
    used = getattr(env, "fmrif_transcripts_used", set())
    if folder.is_dir():
        for path in sorted(folder.glob("*.txt")):
            if path.stem not in used:
                logger.warning("transcript %s is shown on no page; show it "
                               "with fmrif-transcript or drop the step from "
                               "docs/transcripts.py", path.name)


#: what shows as an error box in a built page although Sphinx gave no warning
#: (so -W cannot catch it): Furo styles any table-of-contents block
#: (``.. contents::``) as a red "ERROR: Adding a table of contents ... is
#: unnecessary" box, its sidebar has one already; docutils marks what it
#: could not parse as system-message or problematic
HTML_PROBLEMS = {
    "a table of contents block, which Furo shows as an ERROR box (its "
    "sidebar has the contents already): remove the '.. contents::'":
        re.compile(r'class="(?![^"]*this-will-duplicate)[^"]*\bcontents\b[^"]*"'),
    "an error box of docutils (system-message)":
        re.compile(r'class="[^"]*\bsystem-message\b'),
    "text docutils could not parse (problematic)":
        re.compile(r'class="[^"]*\bproblematic\b'),
}


def html_problems(html: str) -> list[str]:
    """What in a built page shows as an error to its reader."""
    return [what for what, pattern in HTML_PROBLEMS.items() if pattern.search(html)]


def _check_html(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    out = Path(app.outdir)
    for page in sorted(out.rglob("*.html")):
        for problem in html_problems(page.read_text(encoding="utf-8")):
            logger.warning("%s shows %s", page.relative_to(out), problem)


def setup(app):
    app.add_config_value("fmrif_transcripts", "_build/transcripts", "env")
    app.add_directive("fmrif-command", CommandDirective)
    app.add_directive("fmrif-transcript", TranscriptDirective)
    app.add_directive("fmrif-messages", MessagesDirective)
    app.connect("env-purge-doc", _purge)
    app.connect("env-check-consistency", _check)
    app.connect("build-finished", _check_html)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
