"""The tokenizer as a spec axis: its keys and their errors, the corpus it builds, identities, and bits per character
recorded end to end (floors worked out by hand)."""

from __future__ import annotations

import math
import textwrap
import unicodedata

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.data.corpora import DataConfig, load_corpus
from harness.spec.expansion import expand
from harness.spec.parsing import load_spec
from harness.spec.problems import SpecError
from tests.conftest import SHRINK, shrink_args


def write(tmp_path, body: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def spec_with_data(tmp_path, data: str, extra: str = ""):
    return write(
        tmp_path,
        f"""\
        name: t
        base:
          data: {data}
          train: {{steps: 10}}
          {extra}""",
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            "{dataset: tinyshakespeare, tokenizer: wordpiece}",
            "3:47: data.tokenizer: unknown value 'wordpiece'; choices: char, jamo, bpe, bytes",
        ),
        ("{dataset: tinyshakespeare, vocab_size: 300}", "data.vocab_size: is only for tokenizer 'bpe'; 'char'"),
        (
            "{dataset: tinyshakespeare, tokenizer: jamo, vocab_size: 300}",
            "data.vocab_size: is only for tokenizer 'bpe'; 'jamo'",
        ),
        ("{dataset: tinyshakespeare, tokenizer: bpe}", "data.vocab_size: tokenizer 'bpe' needs data.vocab_size"),
        (
            "{dataset: tinyshakespeare, tokenizer: bpe, vocab_size: 100}",
            "data.vocab_size: must be at least 256 (the byte-level base alphabet, one token per byte), got 100",
        ),
        ("{dataset: tinyshakespeare, tokenizer: bpe, vocab_size: many}", "data.vocab_size: expected integer or null"),
    ],
)
def test_tokenizer_keys_refuse_bad_values_with_file_and_line(tmp_path, capsys, data, message):
    path = spec_with_data(tmp_path, data)
    with pytest.raises(SpecError) as caught:
        expand(load_spec(path))
    assert any(line.startswith(str(path)) and message in line for line in caught.value.problems), caught.value.problems
    assert main(["validate", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_vocab_size_the_train_text_cannot_reach_fails_before_anything_trains(tmp_path, capsys, mlflow_store):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("ab ab ab ba ba\n" * 40, encoding="utf-8")
    path = spec_with_data(tmp_path, f"{{path: {corpus}, tokenizer: bpe, vocab_size: 5000}}")
    assert main(["run", str(path), "--no-progress", *shrink_args()]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:" in err and "data.vocab_size" in err and "fewer than the vocab_size 5000" in err
    assert "Traceback" not in err
    assert MlflowClient().search_experiments(filter_string="name = 't'") == [], "nothing was recorded"


def test_a_corpus_that_is_not_nfc_is_refused_under_jamo_with_where_and_why(tmp_path, capsys, mlflow_store):
    corpus = tmp_path / "nfd.txt"
    corpus.write_text(unicodedata.normalize("NFD", "한국어 문장입니다\n") * 50, encoding="utf-8")
    path = spec_with_data(tmp_path, f"{{path: {corpus}, tokenizer: jamo}}")
    assert main(["run", str(path), "--no-progress", *shrink_args()]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:" in err and "not in Unicode NFC" in err and "unicodedata.normalize('NFC'" in err
    assert "Traceback" not in err
    # The same file under char trains: it is only jamo that could not give it back unchanged.
    assert load_corpus(DataConfig(path=str(corpus)), None).tokenizer.name == "char"


def test_a_prompt_that_is_not_nfc_is_refused_under_jamo(tmp_path, capsys, data_dir):
    prompt = unicodedata.normalize("NFD", "안녕")
    path = spec_with_data(tmp_path, "{dataset: korean-chatbot, tokenizer: jamo}", f"sample: {{prompt: '{prompt}'}}")
    assert main(["validate", str(path), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "sample.prompt" in err and "not in Unicode NFC" in err and "Traceback" not in err


def test_tokenizer_keys_at_their_defaults_change_no_hash(tmp_path):
    plain = expand(load_spec(spec_with_data(tmp_path, "{dataset: tinyshakespeare}")))[0].config
    explicit = expand(
        load_spec(spec_with_data(tmp_path, "{dataset: tinyshakespeare, tokenizer: char, vocab_size: null}"))
    )[0].config
    assert plain.config_hash() == explicit.config_hash()
    assert "data.tokenizer" not in plain.identity() and "data.vocab_size" not in plain.identity()


def test_extra_chars_changes_no_byte_level_identity(tmp_path):
    def config_hash(data):
        return expand(load_spec(spec_with_data(tmp_path, data)))[0].config.config_hash()

    for tokenizer in ("bytes", "bpe, vocab_size: 300"):
        with_extra = config_hash(f"{{dataset: korean-chatbot, tokenizer: {tokenizer}}}")
        without = config_hash(f"{{dataset: korean-chatbot, tokenizer: {tokenizer}, extra_chars: false}}")
        assert with_extra == without, tokenizer
    assert config_hash("{dataset: korean-chatbot, extra_chars: false}") != config_hash("{dataset: korean-chatbot}")
    assert config_hash("{dataset: korean-chatbot, tokenizer: bytes}") != config_hash("{dataset: korean-chatbot}")


def test_every_tokenizer_splits_the_same_text_and_counts_its_characters(data_dir):
    texts = {}
    for tokenizer, vocab_size in (("char", None), ("jamo", None), ("bytes", None), ("bpe", 400)):
        corpus = load_corpus(DataConfig(dataset="korean-chatbot", tokenizer=tokenizer, vocab_size=vocab_size), data_dir)
        texts[tokenizer] = (corpus.tokenizer.decode(corpus.val[:2000]), corpus.train_chars, corpus.val_chars)
        if tokenizer == "char":
            assert (corpus.train_chars, corpus.val_chars) == (len(corpus.train), len(corpus.val))
        else:  # jamo splits a syllable into 2 or 3, bytes into 3 bytes, bpe merges some back
            assert len(corpus.val) != corpus.val_chars
    splits = {(train, val) for _, train, val in texts.values()}
    assert len(splits) == 1, f"every tokenizer reads the same train and val text: {splits}"
    # The val text starts the same way whatever the tokenizer (bytes and bpe may end inside a character).
    starts = [text[:400] for text, _, _ in texts.values()]
    assert all(start == starts[0] for start in starts), starts


def test_bpe_of_a_corpus_learns_from_its_train_split_only(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    # position split at 0.9: the last tenth, all "zqxj", is val text only
    path.write_text("the cat sat on the mat\n" * 900 + "zqxj zqxj zqxj\n" * 150, encoding="utf-8")
    corpus = load_corpus(DataConfig(path=str(path), tokenizer="bpe", vocab_size=262), None)
    tokens = corpus.tokenizer.token_bytes
    assert not any(b"zq" in t or b"qx" in t or b"xj" in t for t in tokens), "a val-only pair became a token"
    assert any(b"at" in t for t in tokens), "train pairs did become tokens"
    assert corpus.tokenizer.decode(corpus.val).endswith("zqxj zqxj zqxj\n")
    assert list((tmp_path / "cache" / "nanoko-harness" / "tokenizers").glob("bpe-*-262-*.json")), "cached by content"


# Text "가각" repeated. Char: the two syllables alternate, so a bigram predicts each from the one before: floor 0.
# Jamo: 가 = ᄀ ᅡ, 각 = ᄀ ᅡ ᆨ; after ᅡ comes ᄀ or ᆨ half the time each, every other transition is sure. One
# period (2 characters, 5 tokens) costs 2 ln 2 nats: floor 2 ln 2 / 5 nats per token, 2 ln 2 / (2 ln 2) = 1 bit
# per character. Bytes: 가 = EA B0 80, 각 = EA B0 81; after B0 comes 80 or 81, the rest is sure: 2 ln 2 nats over
# 6 tokens, again 1 bit per character.
HAND_FLOORS = {"char": (0.0, 0.0), "jamo": (2 * math.log(2) / 5, 1.0), "bytes": (2 * math.log(2) / 6, 1.0)}


@pytest.mark.parametrize("tokenizer", sorted(HAND_FLOORS))
def test_the_bigram_floor_per_tokenizer_matches_the_hand_computation(tmp_path, mlflow_store, tokenizer):
    path = tmp_path / "ga-gak.txt"
    path.write_text("가각" * 2000, encoding="utf-8")  # 4,000 characters: the train split is 1,800 periods
    spec = spec_with_data(tmp_path, f"{{path: {path}, tokenizer: {tokenizer}, extra_chars: false}}")
    overrides = [*shrink_args(**{"model.kind": "bigram", "sample.prompt": "가"})]
    assert main(["run", str(spec), "--no-progress", *overrides]) == 0
    runs = mlflow.search_runs(experiment_names=["t"])
    (run,) = [row for _, row in runs.iterrows() if isinstance(row.get("tags.mlflow.parentRunId"), str)]
    floor_nats, floor_bits = HAND_FLOORS[tokenizer]
    assert run["metrics.summary/bigram_floor"] == pytest.approx(floor_nats, abs=2e-3)
    assert run["metrics.summary/bigram_floor_bpc"] == pytest.approx(floor_bits, abs=2e-3)
    tokens_per_char = {"char": 1.0, "jamo": 2.5, "bytes": 3.0}[tokenizer]
    assert run["metrics.summary/chars_per_token"] == pytest.approx(1 / tokens_per_char)
    # The val curve in bits per character is the loss over the characters: nats per token x tokens per char / ln 2.
    history = MlflowClient().get_metric_history(run["run_id"], "loss/val_bpc")
    assert len(history) == SHRINK["train.steps"] // SHRINK["train.eval_interval"] + 1
    assert history[-1].value == pytest.approx(run["metrics.summary/val_loss"] * tokens_per_char / math.log(2))
    sample = MlflowClient().download_artifacts(run["run_id"], "samples/after.txt", str(tmp_path))
    text = open(sample, encoding="utf-8").read()
    # The sample starts with the prompt, recomposed (NFC): under jamo the next token may make it 각.
    assert unicodedata.is_normalized("NFC", text) and text[0] in "가각", "samples are text, syllables recomposed"


def test_a_tokenizer_axis_is_compared_in_bits_per_character_only(tmp_path, mlflow_store):
    import pandas as pd

    corpus = tmp_path / "ga-gak.txt"
    corpus.write_text("가각 가각 각가\n" * 600, encoding="utf-8")
    spec = write(
        tmp_path,
        f"""\
        name: tok
        base:
          data: {{path: {corpus}, extra_chars: false}}
          model: {{kind: bigram}}
          train: {{context_length: 4}}
          sample: {{prompt: "가"}}
        grid:
          tokenizer:
            char: {{data.tokenizer: char}}
            jamo: {{data.tokenizer: jamo, train.context_length: 8}}
            bytes: {{data.tokenizer: bytes, train.context_length: 12}}
          train.lr: [0.01, 0.1]
        seeds: [1, 2]
        """,
    )
    assert main(["run", str(spec), "--no-progress", "--results-dir", str(tmp_path / "results"), *shrink_args()]) == 0
    (out,) = (tmp_path / "results" / "tok").glob("overrides-*")  # the shrunk sweep: not the spec as written
    effects = pd.read_csv(out / "effects.csv")
    runs = pd.read_csv(out / "runs.csv")
    tokenizer_rows = effects[effects["axis"] == "tokenizer"]
    assert set(tokenizer_rows["metric"]) == {"final_val_bpc"}, "tokenizers are never compared in nats per token"
    # each tokenizer against the first level, within each lr (the vocabulary interacts with the model), on seeds
    assert list(tokenizer_rows["baseline"]) == ["char"] * 4 and set(tokenizer_rows["n_pairs"]) == {2}
    assert sorted(tokenizer_rows["data"].str.extract(r"lr=([0-9.]+)")[0].astype(float)) == [0.01, 0.01, 0.1, 0.1]
    assert set(tokenizer_rows["kind"]) == {"treatment"}, "the same text: a treatment, not different data"
    jamo = tokenizer_rows[tokenizer_rows["level"] == "jamo"].iloc[0]
    lr = float(jamo["data"].split("lr=")[1])
    at = runs[runs["train.lr"] == lr].pivot_table(index="train.seed", columns="tokenizer", values="final_val_bpc")
    assert jamo["mean_difference"] == pytest.approx((at["jamo"] - at["char"]).mean())
    lr_rows = effects[(effects["axis"] == "train.lr") & (effects["metric"] == "final_val_loss")]
    assert len(lr_rows) == 1 and lr_rows["n_pairs"].item() == 6, "lr paired within each tokenizer and seed"
    # The lr effect in bits: the paired differences of the runs' own bits per character, whatever the tokenizer.
    by_lr = runs.pivot_table(index=["tokenizer", "train.seed"], columns="train.lr", values="final_val_bpc")
    assert lr_rows["mean_difference_bits"].item() == pytest.approx((by_lr[0.1] - by_lr[0.01]).mean())
    view = pd.read_csv(out / "tokenizers.csv")
    assert sorted(view["data.tokenizer"].unique()) == ["bytes", "char", "jamo"]
    row = view[(view["data.tokenizer"] == "jamo")].iloc[0]
    # "가각 가각 각가\n": 9 characters; 가 is 2 jamo and 각 3, three of each, + 2 spaces + a newline: 18 tokens
    assert row["chars_per_token"] == pytest.approx(9 / 18, rel=1e-3)
    assert row["context_chars"] == pytest.approx(8 * 9 / 18, rel=1e-3)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Tokenizers, in bits per character" in report and "jamo vs char" in report
    assert "**Which tokenizer gives the best model**" in report
    summary = pd.read_csv(out / "summary.csv")  # the bars are drawn from these, in bits per character
    assert {"final_val_bpc_mean", "bigram_floor_bpc"} <= set(summary.columns)
    jamo_setting = summary[summary["tokenizer"] == "jamo"]
    assert jamo_setting["final_val_bpc_mean"].iloc[0] == pytest.approx(
        runs[(runs["tokenizer"] == "jamo") & (runs["train.lr"] == jamo_setting["train.lr"].iloc[0])][
            "final_val_bpc"
        ].mean()
    )
