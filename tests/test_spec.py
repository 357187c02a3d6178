"""Spec loading and expansion: grid, zip, exclude, seeds, overrides, and the errors users will hit."""

from __future__ import annotations

import textwrap

import pytest

from harness.spec import SpecError, expand, load_spec, parse_overrides, with_seeds

from conftest import EXPERIMENTS


def write_spec(tmp_path, body: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


BASE = """
    name: t
    base:
      data: {dataset: tinyshakespeare}
      train: {steps: 10}
"""


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_file_is_valid_and_says_how_to_run_it(path):
    first_lines = path.read_text(encoding="utf-8").splitlines()[:5]
    assert first_lines[0].startswith("# "), "a spec starts with a comment saying what it ablates"
    assert any(f"harness run experiments/{path.name}" in line for line in first_lines)
    assert expand(load_spec(path))


def test_seed_spec_is_the_write_up_grid():
    variants = expand(load_spec(EXPERIMENTS / "seed.yaml"))
    assert len(variants) == 8
    assert {tuple(v.axes) for v in variants} == {("model.kind", "train.batch_size", "data.dataset")}
    combos = {(v.config.model.kind, v.config.train.batch_size, v.config.data.dataset) for v in variants}
    assert combos == {(m, b, d) for m in ("bigram", "ffn") for b in (32, 128) for d in ("tinyshakespeare", "korean-chatbot")}
    for v in variants:
        assert v.config.train.steps == 50000
        assert v.config.train.context_length == 128
        assert v.config.train.lr == 1e-3
        assert v.config.sample.prompt == " " and v.config.sample.max_new_tokens == 200
        assert v.config.model.hidden_sizes == (256, 128)
    assert len({v.config.config_hash() for v in variants}) == 8


def test_zip_varies_lists_together_and_grid_multiplies(tmp_path):
    path = write_spec(tmp_path, BASE + """
    grid:
      model.kind: [bigram, ffn]
    zip:
      - train.batch_size: [32, 128]
        train.lr: [0.001, 0.002]
    """)
    variants = expand(load_spec(path))
    pairs = {(v.config.model.kind, v.config.train.batch_size, v.config.train.lr) for v in variants}
    assert pairs == {(k, 32, 0.001) for k in ("bigram", "ffn")} | {(k, 128, 0.002) for k in ("bigram", "ffn")}


def test_exclude_drops_matching_points(tmp_path):
    path = write_spec(tmp_path, BASE + """
    grid:
      model.kind: [bigram, ffn]
      train.batch_size: [32, 128]
    exclude:
      - {model.kind: ffn, train.batch_size: 128}
    """)
    ids = [v.id for v in expand(load_spec(path))]
    assert ids == ["kind=bigram,batch_size=32", "kind=bigram,batch_size=128", "kind=ffn,batch_size=32"]


def test_seeds_repeat_every_variant_and_cli_seeds_replace_them(tmp_path):
    path = write_spec(tmp_path, BASE + """
    grid:
      model.kind: [bigram, ffn]
    seeds: [1, 2, 3]
    """)
    spec = load_spec(path)
    variants = expand(spec)
    assert len(variants) == 6
    assert sorted({v.config.train.seed for v in variants}) == [1, 2, 3]
    assert variants[0].id == "kind=bigram,seed=1"
    assert len(expand(with_seeds(spec, [7]))) == 2


def test_overrides_win_over_grid_and_collapse_that_axis():
    spec = load_spec(EXPERIMENTS / "seed.yaml")
    variants = expand(spec, parse_overrides(["train.steps=200", "data.dataset=korean-chatbot"]))
    assert len(variants) == 4
    assert all(v.config.train.steps == 200 and v.config.data.dataset == "korean-chatbot" for v in variants)
    assert all("data.dataset" not in v.axes for v in variants)


def test_override_values_are_yaml_scalars_and_1e_minus_3_is_a_number():
    overrides = parse_overrides(["train.lr=1e-3", "train.fast_path=false", "sample.prompt=hi there"])
    assert overrides["train.fast_path"] is False and overrides["sample.prompt"] == "hi there"
    config = expand(load_spec(EXPERIMENTS / "seed.yaml"), overrides)[0].config
    assert config.train.lr == 0.001  # YAML 1.1 reads 1e-3 as a string; numbers fields accept it


def test_config_hash_ignores_nothing_that_changes_training():
    spec = load_spec(EXPERIMENTS / "seed.yaml")
    a = expand(spec)[0].config.config_hash()
    assert expand(spec)[0].config.config_hash() == a
    assert expand(spec, {"train.lr": 2e-3})[0].config.config_hash() != a


@pytest.mark.parametrize(
    "body, expected",
    [
        ("name: t\nbase:\n  trian: {steps: 1}\n", ["unknown section 'trian'", "did you mean 'train'"]),
        ("name: t\nbase:\n  train: {stpes: 1}\n", ["train.stpes", "did you mean 'steps'", "batch_size"]),
        ("name: t\nbase:\n  data: {dataset: tinyshakespeare}\n  train: {steps: many}\n", ["train.steps", "expected integer", "'many'"]),
        ("name: t\nbase:\n  data: {dataset: tinyshakespeare}\n  train: {batch_size: 0}\n", ["train.batch_size", ">= 1"]),
        ("name: t\nbase:\n  data: {dataset: tinyshakespeare}\n  train: {lr: -0.1}\n", ["train.lr", "> 0"]),
        ("name: t\nbase:\n  data: {dataset: tinyshakespeare}\n  model: {kind: gpt}\n", ["model.kind", "'gpt'", "bigram, ffn"]),
        ("name: t\nbase:\n  data: {dataset: shakespear}\n", ["data.dataset", "'shakespear'", "tinyshakespeare, korean-chatbot"]),
        ("name: t\nbase:\n  data: {dataset: tinyshakespeare}\ngrid:\n  model.kind: bigram\n", ["grid", "model.kind", "non-empty list"]),
        ("name: t\nbase: {}\nseedz: [1]\n", ["unknown top-level key 'seedz'", "did you mean 'seeds'"]),
        ("name: [1, 2]\n", ["name", "expected a string"]),
    ],
)
def test_spec_errors_name_the_file_the_key_and_the_choices(tmp_path, body, expected):
    path = write_spec(tmp_path, body)
    with pytest.raises(SpecError) as caught:
        expand(load_spec(path))
    message = str(caught.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


@pytest.mark.parametrize(
    "body, expected",
    [("", "the file is empty"), ("- a\n- b\n", "must be a mapping"), ("name: t\nbase: [\n", "invalid YAML at line")],
)
def test_unreadable_specs(tmp_path, body, expected):
    path = write_spec(tmp_path, body)
    with pytest.raises(SpecError, match=expected):
        load_spec(path)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_bad_override_is_named():
    with pytest.raises(SpecError, match=r"unknown key 'train.stepz'.*did you mean 'steps'"):
        parse_overrides(["train.stepz=3"])
    with pytest.raises(SpecError, match="expected key=value"):
        parse_overrides(["train.steps"])
