"""The documentation cannot go stale: what it lists is checked against the code.

``make docs`` checks the same while it builds (docs/_ext/fmrif_docs.py); these
tests say it quickly, without Sphinx and without running the transcripts.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PACKAGE = DOCS.parent / "datalad_fmrif"
sys.path.insert(0, str(DOCS / "_ext"))

import fmrif_messages

TRANSCRIPT = re.compile(r"\{fmrif-transcript\}\s+([\w-]+)")


def pages() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8")
            for p in sorted(DOCS.glob("*.md")) + sorted(DOCS.glob("*.rst"))}


# -- troubleshooting ------------------------------------------------------------------


def test_every_message_has_a_troubleshooting_entry():
    messages = fmrif_messages.collect()
    assert len(messages) > 100  # the scan found the messages at all
    entries = fmrif_messages.page_patterns(
        (DOCS / "troubleshooting.md").read_text(encoding="utf-8"))
    unmatched, unused = fmrif_messages.coverage(messages, entries)
    assert not unmatched, "messages without an entry in docs/troubleshooting.md:\n" + \
        "\n".join(f"  {m.text}   ({', '.join(m.places)})" for m in unmatched)
    assert not unused, "entries of docs/troubleshooting.md that match no message " \
        "any more:\n" + "\n".join(f"  {p}" for p in unused)


def test_message_scan_renders_templates(tmp_path):
    pkg = tmp_path / "datalad_fmrif"
    pkg.mkdir()
    (pkg / "mod.py").write_text(
        'HELP = "run it again"\n'
        "class OwnError(ValueError):\n    pass\n"
        "def f(name, n, ok):\n"
        '    lgr.warning("%s is odd", name)\n'
        '    yield result("ok", "all fine")\n'
        '    yield result("error", f"{name!r} broke: {len(n)} left; {HELP}")\n'
        '    raise OwnError("no " + ("way" if ok else "chance at all"))\n')
    texts = {(m.kind, m.text) for m in fmrif_messages.collect(pkg)}
    assert texts == {
        ("warning", "<…> is odd"),
        ("result:error", "'<name>' broke: <n> left; run it again"),
        ("error", "no chance at all"),
    }


def test_patterns_match_pieces_or_whole_templates():
    message = fmrif_messages.Message("the <what> is empty", "error")
    assert fmrif_messages.matches("IS EMPTY", message)
    assert fmrif_messages.matches("= the <what> is empty", message)
    assert not fmrif_messages.matches("= <what> is empty", message)


# -- transcripts --------------------------------------------------------------------------


def test_every_transcript_step_is_shown_and_every_shown_one_is_made():
    steps = set(re.findall(r'Step\(\s*"([\w-]+)"',
                           (DOCS / "transcripts.py").read_text(encoding="utf-8")))
    shown = {name for text in pages().values() for name in TRANSCRIPT.findall(text)}
    assert shown - steps == set(), "pages show transcripts that no step makes"
    assert steps - shown == set(), "steps whose transcript no page shows"


# -- reference and provenance ----------------------------------------------------------------


def test_every_command_is_in_the_reference():
    from datalad_fmrif import command_suite

    commands = (DOCS / "commands.rst").read_text(encoding="utf-8")
    api = (DOCS / "api.rst").read_text(encoding="utf-8")
    for _, _, cmdline, pyname in command_suite[1]:
        assert f".. fmrif-command:: {cmdline}\n" in commands
        assert f".. autofunction:: datalad.api.{pyname}\n" in api


def _dict_keys(path: Path, function: str, variable: str) -> set[str]:
    """The string keys of the dict literal assigned to ``variable`` in
    ``function`` (first assignment)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            for stmt in ast.walk(node):
                if (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Dict)
                        and any(isinstance(t, ast.Name) and t.id == variable
                                for t in stmt.targets)):
                    return {k.value for k in stmt.value.keys
                            if isinstance(k, ast.Constant)}
    raise AssertionError(f"no dict {variable} in {function}() of {path.name}")


@pytest.mark.parametrize("what, keys", [
    ("git-annex metadata", lambda: set(re.findall(
        r'"(xnat_[a-z_]+)"', (PACKAGE / "plan.py").read_text(encoding="utf-8")))),
    ("manifest file entries", lambda: _dict_keys(
        PACKAGE / "provenance.py", "session_manifest", "entry")),
    ("the run record's fmrif part", lambda: _dict_keys(
        PACKAGE / "pipeline.py", "_run_record_message", "extra")),
])
def test_provenance_page_names_every_recorded_field(what, keys):
    page = (DOCS / "provenance.md").read_text(encoding="utf-8")
    found = keys()
    assert found, f"found no keys of the {what}"
    missing = sorted(k for k in found if f"`{k}`" not in page
                     and not re.search(rf"`[^`]*\b{re.escape(k)}\b[^`]*`", page))
    assert not missing, f"docs/provenance.md does not explain these {what}: {missing}"


# -- what the built pages look like ------------------------------------------------------


def test_built_pages_are_checked_for_error_boxes():
    import fmrif_docs

    furo_box = '<div class="contents local topic" id="commands">'
    assert fmrif_docs.html_problems(furo_box)
    assert fmrif_docs.html_problems('<div class="system-message">')
    escape = '<div class="contents this-will-duplicate-information-and-it-is-still-useful-here">'
    clean = ('<div class="toc-tree-container"><div class="content">'
             '<div class="highlight-console notranslate">' + escape)
    assert fmrif_docs.html_problems(clean) == []
    for name, text in pages().items():
        assert ".. contents::" not in text and "{contents}" not in text, name


def test_transcripts_show_each_command_above_its_output():
    sys.path.insert(0, str(DOCS))
    import transcripts

    step = "datalad drop X\ndatalad get X"
    commands = transcripts.split_commands(step)
    assert commands == ["datalad drop X", "datalad get X"]
    assert transcripts.transcript(commands, ["drop(ok): X\n", "get(ok): X\n"],
                                  cwd="~/study") == (
        "$ cd ~/study\n$ datalad drop X\ndrop(ok): X\n$ datalad get X\nget(ok): X\n")
    compound = "( umask 077\n  { echo a\n  } > f )\nls -l f"
    commands = transcripts.split_commands(compound)
    assert commands == ["( umask 077\n  { echo a\n  } > f )", "ls -l f"]
    text = transcripts.transcript(commands, ["", "-rw------- f"])
    assert "\n> " not in text and text.startswith("$ ( umask 077\n    { echo a")


def test_troubleshooting_shows_messages_not_templates():
    import fmrif_docs

    parts = fmrif_docs.message_parts("no credential '<name>' for <server_url>: <…>")
    assert parts == [("no credential '", "name"), ("' for ", "server URL"),
                     (": ", "…"), ("", "")]
    assert fmrif_docs.shown_words("<who>: <e>") == ""
    assert fmrif_docs.shown_words("cannot write <output>") == "cannot write"


def test_command_help_writes_code_like_datalad_and_examples_are_shell():
    import fmrif_docs

    from datalad_fmrif import command_suite

    for _, _, name, _ in command_suite[1]:
        parser = fmrif_docs._command_parsers()[name]
        assert "``" not in parser.format_help(), name
        rst = fmrif_docs.command_rst(name)
        assert not any(line.lstrip().startswith("% ") for line in rst), name
    assert fmrif_docs._console_examples(["Check it::", "", "   % datalad x"]) == [
        "Check it:", "", ".. code-block:: console", "", "   $ datalad x"]
