"""The ``~/.xnat`` YAML file of the original tutorial (``username:`` and
``password:``), read for ``datalad fmrif-login --import``.

Messages name the file and the line, never a value from it.
"""

from __future__ import annotations

import stat
from pathlib import Path

from .credential import Refused

#: an import file or a password on stdin larger than this is not a credential
MAX_INPUT = 64 * 1024


def read_credentials_file(path: Path) -> tuple[str, str, str | None]:
    """User, password, and the file's mode if other users can read it.

    Messages name the file and the line, never a value from it: a YAML parser
    error would quote the offending line, which may be the password.
    """
    import yaml

    try:
        info = path.stat()
    except FileNotFoundError:
        raise Refused(f"import file {path} does not exist") from None
    except OSError as e:
        raise Refused(f"cannot read import file {path}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"import file {path} is not a regular file")
    if info.st_size > MAX_INPUT:
        raise Refused(f"import file {path} is too large for a credentials file")
    # said once, in the result, and only where it still applies (not once
    # the file is removed)
    exposed = stat.filemode(info.st_mode) if info.st_mode & 0o077 else None
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError:
        raise Refused(f"cannot read import file {path}: permission denied") from None
    except UnicodeDecodeError:
        raise Refused(f"import file {path} is not a text (UTF-8) file") from None
    except OSError as e:
        raise Refused(f"cannot read import file {path}: {e.strerror}") from None
    expected = "expected 'username: ...' and 'password: ...'"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise Refused(f"import file {path} is not valid YAML{where}; "
                       f"{expected}") from None
    if not isinstance(doc, dict):
        raise Refused(f"import file {path} is not a YAML mapping; {expected}")
    user = _field(doc, path, "user name", ("username", "user"))
    password = _field(doc, path, "password", ("password", "pass"))
    return user, password, exposed


def _field(doc: dict, path: Path, what: str, keys: tuple[str, ...]) -> str:
    for key in keys:
        if doc.get(key) is not None:
            value = doc[key]
            if not isinstance(value, str):
                # YAML reads 0123 as 83 and yes as True: never guess
                raise Refused(
                    f"the {what} in {path} ('{key}:') is read by YAML as "
                    f"{type(value).__name__}, not text; put it in quotes")
            if not value:
                break
            return value
    raise Refused(f"import file {path} is incomplete: no {what} "
                   f"('{keys[0]}:' or '{keys[1]}:')")
