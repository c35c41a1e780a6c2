"""Files a user names: read as UTF-8 text with errors that name the file, and results written private.

Reading: a missing file, a folder, an unreadable file or one that is not UTF-8 is one ``SamullmError`` (of
the caller's class) that names the file and the fix, never a bare ``OSError`` or ``UnicodeDecodeError``.

Writing: reports hold prompts and outputs, so every file samullm_lc writes for a user (run reports,
engine profiles, charts, validation results) is created readable by its owner only (mode 0600), whatever
the umask, and replaces the old file in one rename, so a failed write never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from samullm_lc.errors import ConfigError, SamullmError
from samullm_lc.limits import USER_FILE_BYTES

PRIVATE_FILE_MODE = 0o600
"""The mode of every file ``write_private`` writes (``tempfile.mkstemp`` creates its files so)."""


def read_user_text(path: str | Path, *, what: str, fix: str, error: type[SamullmError] = ConfigError) -> str:
    """The UTF-8 text of the ``what`` file at ``path``; ``error`` naming the file and ``fix`` if it cannot be
    read, is not a regular file (a device such as /dev/zero never ends), is larger than ``USER_FILE_BYTES``
    or is not UTF-8."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise error(f"{what} {path} is not a regular file (a device, pipe or socket); {fix}")
    try:
        with path.open("rb") as file:
            data = file.read(USER_FILE_BYTES.maximum + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}; {fix}") from None
    if len(data) > USER_FILE_BYTES.maximum:
        raise error(f"{what} {path} is over the limit of {USER_FILE_BYTES.maximum:,} bytes; {USER_FILE_BYTES.reason}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); {fix}") from None


def write_private(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` with mode 0600, parent folders created; returns the path.

    The data goes to a temporary file in the same folder (``mkstemp`` creates it 0600), which then replaces
    the file: an existing file of another mode is replaced, not rewritten in place. A symbolic link keeps
    pointing where it did (its target is replaced); a device, pipe or socket is refused (``ConfigError``),
    never replaced.
    """
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path
    _refuse_special_file(target, what="file")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def check_writable(path: str | Path, *, what: str) -> Path:
    """``path`` ready for ``write_private`` later: parent folders created, not a folder, device, pipe or socket,
    its folder writable.

    Raises ``ConfigError`` naming the ``what`` file and the fix. The folder is tested by creating (and
    removing) a file in it, which also catches read-only file systems.
    """
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path
    fix = f"give a writable file path for the {what}"
    if target.is_dir():
        raise ConfigError(f"the {what} path {path} is a folder; {fix}")
    _refuse_special_file(target, what=what)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write the {what} to {path}: {exc.strerror or exc}; {fix}") from None
    return path


def _refuse_special_file(path: Path, *, what: str) -> None:
    """``ConfigError`` if ``path`` exists and is not a regular file: ``write_private`` replaces the file, and
    replacing a device such as /dev/null or a pipe would break whatever else uses it."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise ConfigError(f"the {what} path {path} is not a regular file (a device, pipe or socket); give a "
                          "path to a file (results are also printed on the terminal)")
