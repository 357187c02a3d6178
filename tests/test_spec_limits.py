"""Hostile specs (issue 26): each is refused at its line with exit 2 and no traceback, before it can hang the
harness or exhaust its memory: an alias bomb, a recursive or too deep alias, a file past 1 MiB, a grid past
100,000 variants, non-finite floats, integers past 64 bits. Times and memory: benchmarks/spec_hostile.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import typing

import pytest
from conftest import PROJECT_ROOT

from harness.cli import main
from harness.spec.expansion import MAX_VARIANTS_ENV, expand, parse_overrides
from harness.spec.keys import SECTIONS, all_dotted_keys, type_value
from harness.spec.parsing import load_spec
from harness.spec.problems import SpecError
from harness.spec.reading import MAX_SPEC_BYTES

BASE = """\
name: t
base:
  data: {dataset: tinyshakespeare}
  train: {steps: 10}
"""

# "Billion laughs": nine levels of nine aliases, 9^9 = 387,420,489 strings once expanded.
ALIAS_BOMB = """\
name: bomb
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def write(tmp_path, text: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def spec_error(path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        expand(load_spec(path))
    return caught.value.problems


def validate(path, capsys, *words) -> str:
    """``harness validate`` in this process: exit 2 and no traceback; what it wrote to stderr."""
    assert main(["validate", str(path), *words]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.rstrip().endswith("nothing was run")
    return err


# --- YAML aliases -----------------------------------------------------------------------------------------


def test_an_alias_bomb_is_refused_at_the_alias_that_grows_it_past_the_bound(tmp_path, capsys):
    path = write(tmp_path, ALIAS_BOMB)
    # a: 10 values (the list and its 9 strings); b: 1 + 9 x 10 = 91; c: 820; d: 7,381; e: 66,430. Before f's
    # first *e the document has 74,742 (the mapping, 6 keys, name's value, a..e, f's list): that *e crosses 100,000.
    (problem,) = spec_error(path)
    assert problem.startswith(
        f"{path}:7:8: the spec grows past 100,000 values here (alias *e stands for 66,430 values, counted at each use)"
    )
    assert f"{path}:7:8: the spec grows past 100,000 values" in validate(path, capsys)


def test_the_alias_bomb_through_python_m_harness_exits_2_at_once(tmp_path):
    """The real command line, in its own process: without the bound it grew past 12 GB and did not answer."""
    path = write(tmp_path, ALIAS_BOMB)
    command = [sys.executable, "-m", "harness", "validate", str(path)]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert (done.returncode, "Traceback" in done.stderr) == (2, False), done.stderr
    assert f"{path}:7:8: the spec grows past 100,000 values" in done.stderr


def test_a_recursive_alias_is_refused_at_its_line(tmp_path, capsys):
    path = write(tmp_path, BASE + "x: &loop [1, [2, *loop]]\n")
    (problem,) = spec_error(path)
    assert problem.startswith(f"{path}:5:18: invalid YAML: alias *loop is inside the value its anchor &loop names")
    validate(path, capsys)


def test_nesting_past_64_levels_is_refused_and_aliases_count_their_depth(tmp_path):
    deep = write(tmp_path, BASE + "x: " + "[" * 70 + "]" * 70 + "\n")
    # the mapping is level 1 and x's value level 2: the 64th "[" (column 4 + 63) is level 65
    assert spec_error(deep)[0].startswith(f"{deep}:5:67: the spec nests deeper than 64 levels here")
    chained = "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 70))
    chain = write(tmp_path, BASE + "a0: &a0 [0]\n" + chained, "chain.yaml")
    # aN is a list holding a(N-1): N + 2 values and N + 2 levels (a0: the list and its 0). Inside a62's list
    # (level 2), *a61 brings 63 more levels: 65.
    assert spec_error(chain)[0].startswith(
        f"{chain}:67:12: the spec nests deeper than 64 levels here (alias *a61 stands for 63 values"
    )


def test_aliases_within_the_bound_still_work_merge_keys_included(tmp_path):
    path = write(
        tmp_path,
        textwrap.dedent(
            """\
            name: t
            base:
              data: {dataset: tinyshakespeare}
              model: {kind: ffn}
              train: {steps: 10, batch_size: 8}
            grid:
              sizes:
                small: &small {model.hidden_sizes: [16, 16]}
                tiny: {<<: *small, train.batch_size: 4}
                large: {model.hidden_sizes: &large [32, 16]}
              train.lr: [0.001, 0.002]
            zip:
              train.weight_decay: [0.0, 0.1]
              train.context_length: [8, 16]
            exclude:
              - {sizes: large, train.lr: 0.002}
            """
        ),
    )
    variants = expand(load_spec(path))
    assert len(variants) == 3 * 2 * 2 - 2
    tiny = [v.config for v in variants if v.axes["sizes"] == "tiny"]
    assert {(c.model.hidden_sizes, c.train.batch_size) for c in tiny} == {((16, 16), 4)}


def test_an_integer_of_thousands_of_digits_is_refused_at_its_line(tmp_path, capsys):
    path = write(tmp_path, BASE.replace("steps: 10", "steps: 1" + "0" * 5000))
    assert spec_error(path) == [f"{path}:4:18: an integer of 5,001 digits; no key takes more than 19"]
    validate(path, capsys)


# --- the file's size ----------------------------------------------------------------------------------------


def test_a_file_past_1_mib_is_refused_before_it_is_parsed(tmp_path, capsys):
    path = write(tmp_path, BASE + "#" * (MAX_SPEC_BYTES + 1 - len(BASE)) + "\n[unclosed")
    size = path.stat().st_size
    assert spec_error(path) == [
        f"{path}: {size:,} bytes, past a spec's limit of 1,048,576 bytes (1 MiB); a spec is a few kilobytes: "
        "is it the right file?"
    ]
    validate(path, capsys)
    at_limit = write(tmp_path, BASE + "#" * (MAX_SPEC_BYTES - 1 - len(BASE)) + "\n", "at-limit.yaml")
    assert at_limit.stat().st_size == MAX_SPEC_BYTES
    assert len(expand(load_spec(at_limit))) == 1


@pytest.mark.skipif(not __import__("os").path.exists("/dev/zero"), reason="no /dev/zero")
def test_an_endless_file_is_read_only_up_to_the_bound():
    assert spec_error("/dev/zero") == [
        "/dev/zero: more than 1,048,576 bytes, past a spec's limit of 1,048,576 bytes (1 MiB); a spec is a few "
        "kilobytes: is it the right file?"
    ]


# --- the number of variants ---------------------------------------------------------------------------------

EIGHT_AXES = (
    BASE
    + "grid:\n"
    + "".join(
        f"  {key}: [{', '.join(str(start + i) for i in range(10))}]\n"
        for key, start in [
            ("train.batch_size", 1),
            ("train.context_length", 1),
            ("train.steps", 1),
            ("train.warmup_steps", 0),
            ("train.eval_curve_tokens", 1),
            ("train.checkpoint_interval", 0),
            ("train.threads", 0),
            ("sample.max_new_tokens", 0),
        ]
    )
)


def test_a_grid_of_10_to_the_8_variants_is_refused_from_its_axes_sizes(tmp_path, capsys):
    path = write(tmp_path, EIGHT_AXES)
    (problem,) = spec_error(path)  # expanding it would not answer: the count comes from the sizes alone
    assert problem == (
        f"{path}:5:1: 100,000,000 variants before exclude, past the limit of 100,000: train.batch_size (10) x "
        "train.context_length (10) x train.steps (10) x train.warmup_steps (10) x train.eval_curve_tokens (10) x "
        "train.checkpoint_interval (10) x train.threads (10) x sample.max_new_tokens (10); shrink an axis, or set "
        f"{MAX_VARIANTS_ENV}=100000000 to allow it"
    )
    assert problem in validate(path, capsys)


def test_zip_groups_seeds_and_cli_seeds_count_and_the_limit_can_be_raised(tmp_path, capsys, monkeypatch):
    path = write(
        tmp_path,
        BASE
        + "grid:\n  train.batch_size: [8, 16, 32]\n"
        + "zip:\n  - {train.lr: [0.1, 0.2], model.kind: [bigram, ffn]}\nseeds: [1, 2]\n",
    )
    monkeypatch.setenv(MAX_VARIANTS_ENV, "11")
    assert spec_error(path) == [
        f"{path}:5:1: 12 variants before exclude, past the limit of 11: train.batch_size (3) x "
        f"zip group 0 (train.lr, model.kind) (2) x seeds (2); shrink an axis, or set {MAX_VARIANTS_ENV}=12 to "
        "allow it"
    ]
    monkeypatch.setenv(MAX_VARIANTS_ENV, "12")
    assert len(expand(load_spec(path))) == 12
    # --seeds replaces the spec's seeds: 3 x 2 x 5 = 30, counted before anything expands
    assert "30 variants before exclude, past the limit of 12" in validate(path, capsys, "--seeds", *"12345")
    # an override collapses its axis: 2 x 2 = 4 (the spec as written is checked when it is loaded)
    spec = load_spec(path)
    monkeypatch.setenv(MAX_VARIANTS_ENV, "4")
    assert len(expand(spec, {"train.batch_size": 8})) == 4
    with pytest.raises(SpecError, match="12 variants before exclude, past the limit of 4"):
        expand(spec)
    monkeypatch.setenv(MAX_VARIANTS_ENV, "many")
    assert f"{MAX_VARIANTS_ENV}='many': expected a whole number of variants >= 1" in validate(path, capsys)


# --- numbers ------------------------------------------------------------------------------------------------


def _keys_of(kind) -> list[str]:
    """The keys whose value is one ``kind`` (or null): lists of numbers are tested on their own."""
    hints = {}
    for section, cls in SECTIONS.items():
        hints.update({f"{section}.{k}": v for k, v in typing.get_type_hints(cls).items()})
    return [k for k in all_dotted_keys() if hints[k] is kind or hints[k] == kind | None]


FLOAT_KEYS = _keys_of(float)
INT_KEYS = _keys_of(int)


def test_the_key_lists_are_the_sections_numbers():
    assert {"train.lr", "train.weight_decay", "train.min_lr", "train.grad_clip", "data.train_fraction"} <= set(
        FLOAT_KEYS
    )
    assert {"train.steps", "train.batch_size", "model.n_embd", "data.vocab_size", "train.eval_interval"} <= set(
        INT_KEYS
    )


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("written", [".inf", "-.inf", ".nan", ".NaN", "1e999", "-1e999"])
def test_every_float_key_refuses_nan_and_infinity_at_its_line(tmp_path, key, written):
    section, name = key.split(".")
    path = write(tmp_path, f"name: t\nbase:\n  {section}:\n    {name}: {written}\n")
    problems = spec_error(path)
    assert any(
        line.startswith(f"{path}:4:{7 + len(name)}: {key}: expected a finite number, got ") for line in problems
    ), problems


def test_a_non_finite_number_in_a_list_a_grid_or_a_reference_is_refused(tmp_path):
    path = write(
        tmp_path,
        BASE
        + "  model: {kind: gpt}\n"
        + "grid:\n  train.betas: [[0.9, 0.99], [0.9, .inf]]\n  model.dropout: [0.0, .nan]\n"
        + "references:\n  - {match: {}, metric: final_val_loss, value: .inf, source: a paper}\n",
    )
    problems = spec_error(path)
    assert f"{path}:7:30: train.betas: expected a finite number, got [0.9, inf]" in "\n".join(problems)
    assert f"{path}:8:24: model.dropout: expected a finite number, got nan" in "\n".join(problems)
    assert f"{path}:10:48: references[0].value: expected a finite number, got inf" in problems


@pytest.mark.parametrize("key", INT_KEYS)
def test_every_integer_key_stays_within_64_bits(key):
    assert type_value(key, 2**63 - 1)[1] is None
    assert type_value(key, -(2**63))[1] is None
    for value in (2**63, -(2**63) - 1, 10**20):
        typed, problem = type_value(key, value)
        assert (
            problem
            == f"expected an integer from -2**63 to 2**63 - 1 (64 bits, what torch and MLflow store), got {value}"
        )


def test_train_steps_of_10_to_the_20_is_refused_at_its_line(tmp_path, capsys):
    path = write(tmp_path, BASE.replace("steps: 10", "steps: 100000000000000000000"))
    assert spec_error(path) == [
        f"{path}:4:18: train.steps: expected an integer from -2**63 to 2**63 - 1 (64 bits, what torch and MLflow "
        "store), got 100000000000000000000"
    ]
    validate(path, capsys)


def test_overrides_refuse_non_finite_numbers_and_bombs_on_the_command_line(tmp_path, capsys):
    path = write(tmp_path, BASE)
    err = validate(path, capsys, "train.lr=.inf", "train.weight_decay=-.inf", "train.steps=1" + "0" * 20)
    assert "override train.lr=inf: train.lr: expected a finite number, got inf" in err
    assert "override train.weight_decay=-inf: train.weight_decay: expected a finite number, got -inf" in err
    assert "override train.steps=100000000000000000000: train.steps: expected an integer from -2**63" in err
    # a: 11 values, b: 10 x a = 111, then 1,000 uses of b: 111,000 values from a 4 kB word
    bomb = f"[&a [{', '.join('1' * 10)}], &b [{', '.join(['*a'] * 10)}], [{', '.join(['*b'] * 1000)}]]"
    with pytest.raises(SpecError, match=r"^override model.hidden_sizes:1:\d+: the spec grows past 100,000 values"):
        parse_overrides([f"model.hidden_sizes={bomb}"])
