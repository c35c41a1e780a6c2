"""The fenced code blocks of the README and the docs pages, and the comments that steer their tests.

Convention (docs/contributing.md): a block tagged ``bash`` or ``python`` is run by the tests, in page order,
from the repository root; output is shown in blocks tagged ``text``, never run; a ``bash``/``python`` block
that must not run is preceded by the line ``<!-- not run: REASON -->``; a page whose blocks start a real
vLLM engine says ``<!-- engine -->`` anywhere in it.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_LANGUAGES = ("bash", "python")
LOOKALIKE_LANGUAGES = ("sh", "shell", "console", "zsh", "py", "python3", "pycon")
"""Tags that read as runnable but are not run: a page uses ``bash``, ``python`` or ``text`` instead."""
ENGINE_COMMENT = "<!-- engine -->"

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_NOT_RUN = re.compile(r"<!--\s*not run\b(?P<rest>.*?)-->")  # a line of its own
"""A not-run comment: a line of its own (the same words inside a sentence or a code span are not one)."""


@dataclass(frozen=True, slots=True)
class CodeBlock:
    """One fenced block of a markdown file."""

    path: Path
    line: int  # of the opening fence, 1-based
    language: str  # the info string's first word, lowercased ("" when untagged)
    code: str  # dedented, without the fences
    not_run: str | None  # the reason of a `<!-- not run: REASON -->` line right before the block, else None

    @property
    def runs(self) -> bool:
        return self.language in RUN_LANGUAGES and self.not_run is None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True, slots=True)
class NotRunComment:
    """One ``<!-- not run ... -->`` comment, and the block it stands before (None if none)."""

    path: Path
    line: int
    reason: str
    block: CodeBlock | None


def markdown_files() -> list[Path]:
    """README.md and every markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def is_engine_page(path: Path) -> bool:
    """Whether ``path`` has the line ``<!-- engine -->`` (a line of its own)."""
    return any(line.strip() == ENGINE_COMMENT for line in path.read_text(encoding="utf-8").splitlines())


def code_blocks(path: Path) -> list[CodeBlock]:
    """Every fenced block of ``path``, in order."""
    return _parse(path)[0]


def not_run_comments(path: Path) -> list[NotRunComment]:
    return _parse(path)[1]


def _parse(path: Path) -> tuple[list[CodeBlock], list[NotRunComment]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[CodeBlock] = []
    comments: list[NotRunComment] = []
    pending: tuple[int, str] | None = None  # a not-run comment waiting for its block
    index = 0
    while index < len(lines):
        line = lines[index]
        opening = _FENCE.match(line)
        if opening is None:
            found = _NOT_RUN.fullmatch(line.strip())
            if found:
                if pending is not None:
                    comments.append(NotRunComment(path, pending[0], pending[1], None))
                pending = (index + 1, found.group("rest").lstrip(" :").strip())
            elif line.strip() and pending is not None:  # text between the comment and any block
                comments.append(NotRunComment(path, pending[0], pending[1], None))
                pending = None
            index += 1
            continue
        fence, indent = opening.group("fence"), opening.group("indent")
        language = (opening.group("info").split() or [""])[0].lower()
        body: list[str] = []
        start = index + 1
        index += 1
        while index < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[index]):
            body.append(lines[index].removeprefix(indent))
            index += 1
        index += 1  # the closing fence
        block = CodeBlock(path, start, language, textwrap.dedent("\n".join(body)) + "\n",
                          pending[1] if pending is not None else None)
        blocks.append(block)
        if pending is not None:
            comments.append(NotRunComment(path, pending[0], pending[1], block))
            pending = None
    if pending is not None:
        comments.append(NotRunComment(path, pending[0], pending[1], None))
    return blocks, comments
