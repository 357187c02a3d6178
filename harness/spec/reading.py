"""Reading a spec file: ``yaml.safe_load`` with the line and column of every key, and clear errors for files that
are not UTF-8 YAML (UTF-16, cp949, control characters, duplicate keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.spec.problems import SpecError


def _read_yaml(path: Path) -> tuple[Any, dict[tuple, str]]:
    """``yaml.safe_load`` of the file, and ``file:line:column`` of every key and item (by their path)."""
    if not path.exists():
        raise SpecError(f"{path}: spec file not found")
    if path.is_dir():
        raise SpecError(f"{path}: is a folder, not a spec file")
    raw = path.read_bytes()
    utf16_mark = raw.startswith((b"\xff\xfe", b"\xfe\xff"))
    if utf16_mark or b"\x00" in raw:
        why = "it starts with a UTF-16 byte-order mark" if utf16_mark else "it has NUL bytes, as UTF-16 text does"
        raise SpecError(f"{path}: UTF-16 text, not UTF-8 ({why}); save the spec as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_column(raw, exc.start)
        raise SpecError(
            f"{path}:{line}:{column}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "save the spec as UTF-8 (an editor's 'Save with encoding', or iconv -f cp949 -t utf-8)"
        ) from exc
    text = text.removeprefix("\ufeff")
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # checks every character first: a control character raises here
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        marks: dict[tuple, str] = {}
        if node is not None:
            _collect_marks(loader, node, (), path, marks)
    except yaml.reader.ReaderError as exc:
        line, column = _line_column(text, exc.position)
        raise SpecError(
            f"{path}:{line}:{column}: invalid YAML: character #x{exc.character:04x} (a control character) "
            "is not allowed; delete it"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}{at}: invalid YAML{line}: {problem}") from exc
    finally:
        if loader is not None:
            loader.dispose()
    return data, marks


def _line_column(text: str | bytes, offset: int) -> tuple[int, int]:
    """1-based line and column of ``offset`` in ``text`` (characters of a str, bytes of bytes)."""
    newline = "\n" if isinstance(text, str) else b"\n"
    return text.count(newline, 0, offset) + 1, offset - (text.rfind(newline, 0, offset) + 1) + 1


def _collect_marks(loader, node, prefix: tuple, path: Path, marks: dict) -> None:
    def at(mark) -> str:
        return f"{path}:{mark.line + 1}:{mark.column + 1}"

    if isinstance(node, yaml.MappingNode):
        first_seen: dict[Any, yaml.Mark] = {}  # yaml.safe_load would keep a repeated key's last value silently
        for key_node, value_node in node.value:
            try:
                key = loader.construct_object(key_node, deep=True)
                hash(key)
            except Exception:  # an unhashable key: reported as a bad key, located by its parent
                continue
            if key in first_seen:
                dotted = ".".join(str(k) for k in prefix + (key,))
                raise SpecError(
                    f"{at(key_node.start_mark)}: {dotted}: duplicate key (first at line "
                    f"{first_seen[key].line + 1}); keep one"
                )
            first_seen[key] = key_node.start_mark
            marks[prefix + (key,)] = at(value_node.start_mark)
            marks[prefix + (key, "<key>")] = at(key_node.start_mark)
            _collect_marks(loader, value_node, prefix + (key,), path, marks)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            marks[prefix + (i,)] = at(item.start_mark)
            _collect_marks(loader, item, prefix + (i,), path, marks)
