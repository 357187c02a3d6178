"""Reading a spec file: ``yaml.safe_load`` with the line and column of every key, and clear errors for files that
are not UTF-8 YAML (UTF-16, cp949, control characters, duplicate keys) or that could not be a spec: past
``MAX_SPEC_BYTES``, or growing past ``MAX_YAML_NODES`` values or ``MAX_YAML_DEPTH`` levels once their aliases are
expanded (an alias bomb, "billion laughs"; a recursive alias). The bounds are checked while the document is composed,
so a hostile file costs at most what a spec of the bounds' size costs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.spec.problems import SpecError

MAX_SPEC_BYTES = 1 << 20  # 1 MiB: the largest spec in experiments/ is under 10 kB
MAX_YAML_NODES = 100_000  # values (scalars, lists, mappings) once every alias is expanded, keys included
MAX_YAML_DEPTH = 64  # nesting levels, aliases expanded: a spec nests about 6; Python's recursion limit is 1,000


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts the values an alias stands for as it composes, and stops at the bounds.

    PyYAML composes an alias as a reference to its anchor's node, so the composed tree stays small; but every
    walk of it (``_collect_marks``, each check, ``repr`` in a message) visits an alias's value once per use: nine
    nested levels of nine aliases are 9^9 values. Each node's expanded size and depth is computed once (memoised),
    so the count costs one visit per distinct node.
    """

    def __init__(self, text: str, label: str):
        super().__init__(text)
        self._label = label
        self._nodes = 0
        self._depth = 0
        self._open: set[str] = set()  # anchors of the nodes being composed: an alias to one is recursive
        self._extents: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels) it expands to

    def _at(self, mark) -> str:
        return f"{self._label}:{mark.line + 1}:{mark.column + 1}"

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise SpecError(
                    f"{self._at(event.start_mark)}: invalid YAML: alias *{event.anchor} is inside the value its "
                    f"anchor &{event.anchor} names (a recursive alias, an endless value); write the value out"
                )
            node = self.anchors.get(event.anchor)
            if node is not None:  # else PyYAML reports the undefined alias
                values, levels = self._extent(node)
                why = f"alias *{event.anchor} stands for {values:,} values, counted at each use"
                self._count(values, levels, event.start_mark, why)
            return super().compose_node(parent, index)
        self._count(1, 1, event.start_mark, None)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)

    def _count(self, values: int, levels: int, mark, why: str | None) -> None:
        self._nodes += values
        because = f" ({why})" if why else ""
        if self._nodes > MAX_YAML_NODES:
            raise SpecError(
                f"{self._at(mark)}: the spec grows past {MAX_YAML_NODES:,} values here{because}; a spec has a few "
                "hundred, so it is refused as an alias bomb or not a spec at all (a list of values per variant "
                "belongs in grid or zip)"
            )
        if self._depth + levels > MAX_YAML_DEPTH:
            raise SpecError(
                f"{self._at(mark)}: the spec nests deeper than {MAX_YAML_DEPTH} levels here{because}; "
                "a spec nests about 6"
            )

    def _extent(self, node) -> tuple[int, int]:
        """(values, levels) of a composed node with its aliases expanded; its depth is bounded already."""
        found = self._extents.get(id(node))
        if found is None:
            values, levels = 1, 0
            children = node.value if isinstance(node, yaml.SequenceNode) else ()
            if isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            for child in children:
                child_values, child_levels = self._extent(child)
                values, levels = values + child_values, max(levels, child_levels)
            found = self._extents[id(node)] = (values, levels + 1)
        return found


def _construct_int(loader: _BoundedLoader, node) -> int:
    """PyYAML's int, but an integer of thousands of digits is a problem at its line, not a ValueError."""
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError as exc:  # Python refuses str -> int past sys.get_int_max_str_digits() (4,300 digits)
        raise SpecError(
            f"{loader._at(node.start_mark)}: an integer of {len(node.value):,} digits; no key takes more than 19"
        ) from exc


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load_yaml_text(text: str, label: str) -> Any:
    """``yaml.safe_load`` of a short text (an override's value) within the same bounds as a spec file."""
    loader = _BoundedLoader(text, label)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_yaml(path: Path) -> tuple[Any, dict[tuple, str]]:
    """``yaml.safe_load`` of the file, and ``file:line:column`` of every key and item (by their path)."""
    if not path.exists():
        raise SpecError(f"{path}: spec file not found")
    if path.is_dir():
        raise SpecError(f"{path}: is a folder, not a spec file")
    with path.open("rb") as file:  # a bounded read: /dev/zero or a FIFO has no size to check first
        raw = file.read(MAX_SPEC_BYTES + 1)
    if len(raw) > MAX_SPEC_BYTES:
        size = path.stat().st_size if path.is_file() else 0
        written = f"{size:,} bytes" if size > MAX_SPEC_BYTES else f"more than {MAX_SPEC_BYTES:,} bytes"
        raise SpecError(
            f"{path}: {written}, past a spec's limit of {MAX_SPEC_BYTES:,} bytes (1 MiB); a spec is a few kilobytes: "
            "is it the right file?"
        )
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
        loader = _BoundedLoader(text, str(path))  # checks every character first: a control character raises here
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
