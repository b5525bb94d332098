"""Every message datalad-fmrif can give a user, read from its source code.

The troubleshooting page is checked against this list when the docs are built
(and by ``tests/test_docs.py``): a message in the code without an entry on
the page, or an entry that no message in the code matches any more, fails the
build. So the page cannot go stale when a message is added, changed or removed.

What counts as a message (found with :mod:`ast`, nothing is imported):

- the text given to an exception class when it is created
  (``raise CredentialError(f"...")``, ``TlsError(...)``, ``RemoteError(...)``);
- ``raise_for(value, "...")`` and ``error_message="..."`` of parameter
  constraints;
- result records that report a failure: ``failed("...")``,
  ``result("error", "...")``, ``self._result("impossible", "...")``,
  ``result_record(ACTION, "error", "...")``, ``outcome("error", "...")``,
  ``get_status_dict(status="error", message="...")`` (``ok`` and
  ``notneeded`` results are not failures);
- warnings and errors sent to the log (``lgr.warning("...")``);
- the parts such messages are made of: reasons recorded for a failed file
  (``failed[path] = "..."``), problems of a session plan and rows of an XNAT
  listing that were ignored (``problems.append("...")``,
  ``rejected.append("...")``).

Messages are shown as templates: a value filled in at run time appears as
``<name>`` after the variable it comes from; module-level text constants and
small helper functions that only return text are filled in.
"""

from __future__ import annotations

import ast
import builtins
import re
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "datalad_fmrif"
#: not part of the tool: the sandbox is a stand-in XNAT server for tests
EXCLUDED = ("sandbox",)

_BUILTIN_ERRORS = {
    name for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}
_EXTERNAL_ERRORS = {"RemoteError"}  # annexremote: the special remote's errors
_RESULT_CALLS = {
    # callee name -> (position of the status or None, position of the message,
    #                 status when not given)
    "failed": (None, 0, "impossible"),
    "result": (0, 1, None),
    "_result": (0, 1, None),
    "result_record": (1, 2, None),  # commands/_common.py: (action, status, message)
    "outcome": (0, 1, None),  # credentials/login.py: what a login action gave
}
_NOT_FAILURES = {"ok", "notneeded"}
_LOG_LEVELS = {"warning": "warning", "error": "error", "critical": "error"}
#: lists and dicts whose text items end up in messages
_DETAIL_LISTS = {"problems", "rejected"}
_FAILURE_DICTS = {"failed"}


@dataclass
class Message:
    text: str  # the template, e.g. "no credential '<name>' for <server_url>: ..."
    kind: str  # "error", "warning", or "result:<status>"
    places: list[str] = field(default_factory=list)  # "module.py:line"

    @property
    def module(self) -> str:
        return self.places[0].rsplit(":", 1)[0]


def package_root() -> Path:
    return Path(__file__).resolve().parents[2] / PACKAGE


def source_files(root: Path | None = None) -> list[Path]:
    root = root or package_root()
    return sorted(p for p in root.rglob("*.py")
                  if not any(part in EXCLUDED for part in p.relative_to(root).parts))


# -- rendering expressions as templates -----------------------------------------------


class _Renderer:
    def __init__(self, constants: dict[str, str], helpers: dict[str, ast.expr]):
        self.constants = constants
        self.helpers = helpers

    def text(self, node: ast.AST | None, depth: int = 0) -> str | None:
        """The template of a text expression, or None if it is not text."""
        if node is None or depth > 4:
            return None
        if isinstance(node, ast.Constant):
            return node.value if isinstance(node.value, str) else None
        if isinstance(node, ast.JoinedStr):
            return "".join(self._part(v, depth) for v in node.values)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self.text(node.left, depth), self.text(node.right, depth)
            if left is None and right is None:
                return None
            return (left if left is not None else self._placeholder(node.left)) + \
                (right if right is not None else self._placeholder(node.right))
        if isinstance(node, ast.BoolOp):  # value or "default"
            options = [t for t in (self.text(v, depth) for v in node.values)
                       if t is not None]
            return max(options, key=len) if options else None
        if isinstance(node, ast.IfExp):
            options = [t for t in (self.text(node.body, depth),
                                   self.text(node.orelse, depth)) if t is not None]
            return max(options, key=len) if options else None
        if isinstance(node, ast.Name) and node.id in self.constants:
            return self.constants[node.id]
        if isinstance(node, ast.Call):
            name = _callee(node)
            if name in self.helpers:
                return self.text(self.helpers[name], depth + 1)
        return None

    def _part(self, value: ast.AST, depth: int) -> str:
        if isinstance(value, ast.Constant):
            return str(value.value)
        assert isinstance(value, ast.FormattedValue)
        inner = value.value
        if isinstance(inner, ast.Name) and inner.id in self.constants:
            return self.constants[inner.id]
        text = (self.text(inner, depth)
                if isinstance(inner, (ast.IfExp, ast.BinOp, ast.Call)) else None)
        if text is not None:
            return text
        shown = self._placeholder(inner)
        return f"'{shown}'" if value.conversion == ord("r") else shown

    def _placeholder(self, node: ast.AST) -> str:
        return f"<{_name_of(node)}>"


def _name_of(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        if node.attr == "__name__":
            return "error type"
        return node.attr
    if isinstance(node, ast.Call):
        name = _callee(node)
        if name == "len":
            return "n"
        if name in ("str", "repr", "int", "one_line", "_local_time") and node.args:
            return _name_of(node.args[0])
        return "…"
    if isinstance(node, ast.Subscript):
        return _name_of(node.value)
    if isinstance(node, ast.BinOp):
        return _name_of(node.left)
    return "…"


def _callee(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _status(node: ast.AST | None, default: str | None) -> str | None:
    if node is None:
        return default
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return "error"  # computed: treat as a possible failure


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _arg(call: ast.Call, index: int) -> ast.expr | None:
    return call.args[index] if len(call.args) > index else None


# -- the scan ------------------------------------------------------------------------------


def _error_classes(trees: dict[Path, ast.Module]) -> set[str]:
    """Exception classes: builtin, annexremote's, and the package's own."""
    known = set(_BUILTIN_ERRORS) | _EXTERNAL_ERRORS
    classes = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = [_name_of(b) for b in node.bases]
    changed = True
    while changed:
        changed = False
        for name, bases in classes.items():
            if name not in known and any(b in known for b in bases):
                known.add(name)
                changed = True
    return known


def _module_constants(tree: ast.Module) -> dict[str, str]:
    found = {}
    for node in tree.body:
        # module constants are UPPER_CASE; anything else may be shadowed
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and re.fullmatch(r"[A-Z][A-Z0-9_]*", node.targets[0].id)):
            value = node.value
            if isinstance(value, ast.Constant) and type(value.value) is int:
                found[node.targets[0].id] = str(value.value)
                continue
            text = _Renderer(found, {}).text(value)
            if text is not None:
                found[node.targets[0].id] = text
    return found


def _text_helpers(trees: dict[Path, ast.Module]) -> dict[str, ast.expr]:
    """Functions whose last statement returns text (``no_keyring_help``)."""
    helpers = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.body:
                last = node.body[-1]
                if isinstance(last, ast.Return) and isinstance(
                        last.value, (ast.JoinedStr, ast.BinOp)):
                    helpers[node.name] = last.value
    return helpers


def collect(root: Path | None = None) -> list[Message]:
    """Every message of the package, once per text, with all its places."""
    root = root or package_root()
    trees = {path: ast.parse(path.read_text(encoding="utf-8"), str(path))
             for path in source_files(root)}
    errors = _error_classes(trees)
    helpers = _text_helpers(trees)
    found: dict[tuple[str, str], Message] = {}

    for path, tree in trees.items():
        render = _Renderer(_module_constants(tree), helpers)
        where = path.relative_to(root.parent).as_posix()
        for node in ast.walk(tree):
            hits: list[tuple[str, ast.expr | None]] = []
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Subscript) and _name_of(t.value) in _FAILURE_DICTS
                    for t in node.targets):
                hits.append(("result:error", node.value))
            if not isinstance(node, ast.Call):
                _record(found, render, hits, where, node)
                continue
            name = _callee(node)
            if name in errors:
                hits.append(("error", _arg(node, 0) or _keyword(node, "message")))
            elif name == "raise_for":
                hits.append(("error", _arg(node, 1)))
            elif name in _RESULT_CALLS:
                status_pos, message_pos, default = _RESULT_CALLS[name]
                status = _status(_keyword(node, "status") if status_pos is None
                                 else _arg(node, status_pos), default)
                if status not in _NOT_FAILURES:
                    hits.append((f"result:{status}", _arg(node, message_pos)))
            elif name == "get_status_dict":
                status = _status(_keyword(node, "status"), None)
                if status not in _NOT_FAILURES:
                    hits.append((f"result:{status}", _keyword(node, "message")))
            elif (name in _LOG_LEVELS and isinstance(node.func, ast.Attribute)
                  and _name_of(node.func.value) in ("lgr", "log", "logger")):
                hits.append((_LOG_LEVELS[name], _arg(node, 0)))
            elif (name == "append" and isinstance(node.func, ast.Attribute)
                  and _name_of(node.func.value) in _DETAIL_LISTS):
                hits.append(("detail", _arg(node, 0)))
            description = _keyword(node, "error_message")
            if description is not None:
                hits.append(("error", description))
            _record(found, render, hits, where, node)
    return sorted(found.values(), key=lambda m: (m.places[0].split(":")[0], m.text))


def _record(found: dict, render: _Renderer, hits, where: str, node: ast.AST) -> None:
    for kind, expr in hits:
        text = render.text(expr)
        if not text or not text.strip():
            continue  # a message passed on (str(e)), not written here
        text = normalize(text)
        message = found.setdefault((text, kind), Message(text, kind))
        message.places.append(f"{where}:{node.lineno}")


def normalize(text: str) -> str:
    """One line, single spaces, ``%s``-style fields as ``<…>``."""
    text = re.sub(r"%[-#0 +]*\d*(?:\.\d+)?[sdrf]", "<…>", text)
    return " ".join(text.split())


# -- the troubleshooting page ------------------------------------------------------------------

#: a MyST directive block: ```{fmrif-messages} ... ```
_BLOCK = re.compile(r"^(`{3,})\{fmrif-messages\}[^\n]*\n(.*?)^\1\s*$",
                    re.MULTILINE | re.DOTALL)


def page_patterns(markdown: str) -> list[list[str]]:
    """The match patterns of each ``fmrif-messages`` block of a page."""
    return [[line.strip() for line in body.splitlines() if line.strip()]
            for _, body in _BLOCK.findall(markdown)]


def matches(pattern: str, message: Message) -> bool:
    """A pattern is a piece of the template, compared ignoring case; a
    pattern that starts with ``= `` must be the whole template."""
    if pattern.startswith("= "):
        return pattern[2:].strip().casefold() == message.text.casefold()
    return pattern.casefold() in message.text.casefold()


def coverage(messages: list[Message], entries: list[list[str]]):
    """(messages no entry matches, patterns that match no message)."""
    patterns = [p for entry in entries for p in entry]
    unmatched = [m for m in messages if not any(matches(p, m) for p in patterns)]
    unused = [p for p in patterns if not any(matches(p, m) for m in messages)]
    return unmatched, unused


if __name__ == "__main__":
    for m in collect():
        print(f"{m.places[0]:<40} {m.kind:<18} {m.text}")
