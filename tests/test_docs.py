"""The documentation: the spec reference matches the keys in the code, and the site builds with --strict."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.spec import keys
from harness.spec.reference import MEANINGS, REFERENCE_PATH, reference_text
from harness.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _row(text: str, section: str, name: str) -> list[str]:
    """The cells of one key's row in the section's table."""
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    (line,) = [line for line in part.splitlines() if line.startswith(f"| `{name}` |")]
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_the_committed_reference_is_what_the_code_generates():
    assert REFERENCE_PATH.read_text(encoding="utf-8") == reference_text(), (
        "docs/spec-reference.md is stale: make schema"
    )
    assert main(["reference", "--check"]) == 0


def test_rows_carry_the_defaults_types_and_identity_of_the_code():
    text = REFERENCE_PATH.read_text(encoding="utf-8")
    # values as the spec files and the old README's hand-written table give them
    assert _row(text, "train", "steps")[:5] == ["`steps`", "integer", "`5000`", "", "yes"]
    assert _row(text, "train", "betas")[:5] == [
        "`betas`",
        "list of number",
        "`[0.9, 0.999]`",
        "",
        "yes, when not the default",
    ]
    assert _row(text, "train", "device")[2:5] == ["`auto`", "`auto`, `cpu`, `cuda`, `mps`, `cuda:N`", "no"]
    assert _row(text, "model", "hidden_sizes")[2:5] == ["`[256, 128]`", "", "yes (kind ffn)"]
    assert _row(text, "model", "layer_norm")[2:5] == ["`pre`", "`none`, `pre`", "yes (kind gpt), when not the default"]
    assert _row(text, "data", "path")[2:5] == ["unset", "", "yes: the file's sha256"]
    assert _row(text, "data", "tokenizer")[2:4] == ["`char`", "`char`, `jamo`, `bpe`, `bytes`"]
    assert _row(text, "sample", "prompt")[1:5] == ["string", '`" "`', "", "no"]
    assert "| `practical_difference` | 0.01 |" in text


def test_a_key_added_to_the_code_fails_until_it_has_a_meaning_and_the_page_is_regenerated(monkeypatch):
    grown = dataclasses.make_dataclass(
        "GrownTrainConfig",
        [("label_smoothing", float, dataclasses.field(default=0.1))],
        bases=(TrainConfig,),
        frozen=True,
    )
    monkeypatch.setitem(keys.SECTIONS, "train", grown)
    try:
        with pytest.raises(ValueError, match=r"MEANINGS: no line for train\.label_smoothing"):
            reference_text()
        monkeypatch.setitem(MEANINGS, "train.label_smoothing", "Label smoothing of the cross-entropy.")
        grown_text = reference_text()
        assert _row(grown_text, "train", "label_smoothing")[:5] == ["`label_smoothing`", "number", "`0.1`", "", "yes"]
        assert grown_text != REFERENCE_PATH.read_text(encoding="utf-8")  # so the first test fails until make schema
    finally:
        keys.config_field.cache_clear()
        keys._annotation.cache_clear()
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"no such key: train\.gone"):
        monkeypatch.setitem(MEANINGS, "train.gone", "a line for a key that was removed")
        reference_text()


@pytest.mark.skipif(importlib.util.find_spec("material") is None, reason="needs the docs extra: pip install -e .[docs]")
def test_the_site_builds_strictly(tmp_path):
    """mkdocs --strict with the validation settings of mkdocs.yml: a broken link or anchor, or a page missing
    from the nav, fails the build (CI runs the same through make docs-check)."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    built = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    assert len(built) >= len(pages), (pages, built)
    assert (tmp_path / "site" / "ui" / "compare.png").is_file()  # the pictures come from results/ui


@pytest.mark.skipif(importlib.util.find_spec("material") is None, reason="needs the docs extra: pip install -e .[docs]")
def test_a_page_left_out_of_the_nav_fails_the_strict_build(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n", encoding="utf-8")
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n", encoding="utf-8")
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:\n", 1)[0] + "\nnav:\n  - Home: index.md\n"
    (tmp_path / "mkdocs.yml").write_text(config, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0 and "orphan.md" in done.stdout + done.stderr, done.stdout + done.stderr
