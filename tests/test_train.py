"""The training loop: the fast path is the same math as the write-up's, every model learns, context
models are scored on fixed windows, and the schedule keys do what they say."""

from __future__ import annotations

import copy
import math
from collections import Counter

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.data.corpora import Corpus, DataConfig, load_corpus
from harness.data.tokenizers.char import CharTokenizer
from harness.models.base import CharLanguageModel
from harness.models.config import ModelConfig
from harness.models.registry import build_model
from harness.train.checkpoint import CheckpointError
from harness.train.config import TrainConfig
from harness.train.draws import DRAW_BLOCK_STEPS, WindowDraws
from harness.train.evaluation import LOSS_NOISE_MIN_STEPS, exact_loss, loss_noise
from harness.train.losses import batch_loss_fast, bigram_floor, pair_counts, table_pair_loss
from harness.train.scoring import PairTableLoss, PerPositionLoss
from harness.train.trainer import Trainer

CORPORA = ["tinyshakespeare", "korean-chatbot"]
KINDS = ["bigram", "ffn"]


class Recorder:
    def __init__(self):
        self.points = []

    def log(self, key, value, step):
        self.points.append((key, value, step))

    def steps(self, key):
        return [s for k, _, s in self.points if k == key]


def make_trainer(data_dir, dataset, kind, dtype=torch.float32, **train):
    corpus = load_corpus(DataConfig(dataset), data_dir)
    config = TrainConfig(**{"batch_size": 32, "eval_interval": 50, **train})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        model = build_model(ModelConfig(kind), corpus.tokenizer.vocab_size, config.context_length)
        return Trainer(model, corpus, config, torch.device("cpu"))
    finally:
        torch.set_default_dtype(previous)


class PreviousTokenModel(CharLanguageModel):
    """A stand-in context model (the GPT has its own tests): the logits at t read tokens t and t - 1."""

    position_wise = False

    def __init__(self, vocab_size: int, context_length: int):
        super().__init__(context_length)
        self.current = nn.Embedding(vocab_size, vocab_size)
        self.previous = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx, targets=None):
        logits = self.current(idx) + F.pad(self.previous(idx[:, :-1]), (0, 0, 1, 0))  # nothing before t = 0
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def context_trainer(corpus, model_seed=0, **train):
    config = TrainConfig(**{"context_length": 16, "batch_size": 8, "eval_interval": 10, **train})
    torch.manual_seed(model_seed)
    return Trainer(
        PreviousTokenModel(corpus.tokenizer.vocab_size, config.context_length), corpus, config, torch.device("cpu")
    )


@pytest.mark.parametrize("dataset", CORPORA)
@pytest.mark.parametrize("kind", KINDS)
def test_one_step_loss_and_every_gradient_equal_the_direct_computation(data_dir, dataset, kind):
    trainer = make_trainer(data_dir, dataset, kind)
    model, vocab = trainer.model, trainer.vocab
    chunk = trainer.windows.index_select(0, trainer.sample_starts(0))
    x, y = chunk[:, :-1], chunk[:, 1:]
    _, direct = model(x, y)
    direct_grads = torch.autograd.grad(direct, list(model.parameters()))
    for subset_rows in (False, True):
        fast = batch_loss_fast(model, x, y, vocab, subset_rows)
        fast_grads = torch.autograd.grad(fast, list(model.parameters()))
        torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-6)
        for a, b in zip(fast_grads, direct_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    counts = torch.bincount((x * vocab + y).reshape(-1), minlength=vocab * vocab).view(vocab, vocab).float()
    dense = table_pair_loss(model.logits_table(), counts, x.numel())
    torch.testing.assert_close(dense, direct, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(dense, list(model.parameters())), direct_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _losses_after(data_dir, dataset, kind, fast_path, dtype, steps=200, **train):
    trainer = make_trainer(data_dir, dataset, kind, dtype=dtype, steps=steps, fast_path=fast_path, **train)
    trainer.run(Recorder())
    return trainer.state.step_losses


@pytest.mark.parametrize(
    "dataset, kind, dtype, train",
    [
        ("tinyshakespeare", "bigram", torch.float32, {}),
        ("korean-chatbot", "bigram", torch.float32, {}),
        ("tinyshakespeare", "ffn", torch.float32, {}),
        # In float32 the Korean FFN's two paths drift ~1e-4..1e-3 in 200 steps: AdamW divides by
        # sqrt(v), which magnifies rounding-order differences in tiny gradients. In float64 they
        # agree to ~1e-7, which is what shows the fast path is the same computation. Windows of 32
        # tokens, not the default 128: the per-position path's float64 matmuls over 32 x 128 positions
        # and 1,265 logits took 100 of this test's 155 s; batches of 16, not 32, halve what is left.
        ("korean-chatbot", "ffn", torch.float64, {"context_length": 32, "batch_size": 16}),
    ],
)
def test_200_seeded_steps_end_at_the_same_loss(data_dir, dataset, kind, dtype, train):
    fast = _losses_after(data_dir, dataset, kind, True, dtype, **train)
    direct = _losses_after(data_dir, dataset, kind, False, dtype, **train)
    assert abs(float(fast[-1] - direct[-1])) <= 1e-4
    assert float((fast - direct).abs().max()) <= 1e-4


def test_exact_loss_is_the_mean_cross_entropy_over_every_position(data_dir):
    trainer = make_trainer(data_dir, "tinyshakespeare", "ffn")
    data = trainer.val_data[:5000]
    with torch.no_grad():
        logits = trainer.model.logits_for_tokens(data[:-1])
    brute = torch.nn.functional.cross_entropy(logits, data[1:])
    assert exact_loss(trainer.model, pair_counts(data, trainer.vocab)) == pytest.approx(float(brute), abs=1e-5)


def test_bigram_floor_matches_a_brute_force_count():
    text = "abracadabra, abba cab"
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    pairs = Counter(zip(text, text[1:], strict=False))
    firsts = Counter(text[:-1])
    n = len(text) - 1
    expected = -sum(c / n * math.log(c / firsts[a]) for (a, _), c in pairs.items())
    assert bigram_floor(pair_counts(ids, len(chars))) == pytest.approx(expected, rel=1e-6)


def test_bigram_reaches_its_floor_when_trained_long_enough():
    text = "abcabcabdabc" * 200
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    floor = bigram_floor(pair_counts(ids, len(chars)))
    model = build_model(ModelConfig("bigram"), len(chars), context_length=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    counts = pair_counts(ids, len(chars))
    for _ in range(3000):  # deterministic transitions need large logits: slow to converge exactly
        loss = table_pair_loss(model.logits_table(), counts, int(counts.sum()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert exact_loss(model, counts) == pytest.approx(floor, abs=1e-3)
    assert exact_loss(model, counts) >= floor - 1e-6


@pytest.mark.parametrize("dataset", CORPORA)
@pytest.mark.parametrize("kind", KINDS)
def test_each_model_learns_on_real_data(data_dir, dataset, kind):
    trainer = make_trainer(data_dir, dataset, kind, steps=150, lr=1e-2 if kind == "bigram" else 1e-3)
    recorder = Recorder()
    final = trainer.run(recorder)
    first = next(v for k, v, s in recorder.points if k == "val_loss" and s == 0)
    assert final["final_val_loss"] < first - 0.3
    assert final["final_train_loss"] >= final["bigram_floor"] - 1e-4
    assert final["excess_loss"] == pytest.approx(final["final_train_loss"] - final["bigram_floor"])


def test_curves_are_logged_at_every_eval_and_at_the_end(data_dir):
    trainer = make_trainer(data_dir, "tinyshakespeare", "bigram", steps=125, eval_interval=50)
    recorder = Recorder()
    trainer.run(recorder)
    assert recorder.steps("train_loss") == [0, 50, 100, 125]
    assert recorder.steps("val_loss") == [0, 50, 100, 125]
    assert recorder.steps("batch_loss") == list(range(1, 126))


def test_diverging_run_raises_with_the_step_and_the_lr(data_dir):
    from harness.train.trainer import DivergedError

    trainer = make_trainer(data_dir, "tinyshakespeare", "ffn", steps=100, eval_interval=10, lr=1e6)
    with pytest.raises(DivergedError, match=r"became nan at step \d+ \(lr=1000000.0\)"):
        trainer.run(Recorder())


def test_loss_noise_measures_oscillation_not_trend():
    steps = torch.arange(2000, dtype=torch.float64)
    trend = 3.0 * torch.exp(-steps / 500)
    noise = torch.randn(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    quiet = loss_noise(trend + 0.01 * noise)
    loud = loss_noise(trend + 0.04 * noise)
    assert quiet == pytest.approx(0.01, rel=0.15)
    assert loud == pytest.approx(4 * quiet, rel=0.1)
    assert loss_noise(trend) < 1e-4


def test_same_seed_same_losses(data_dir):
    a = _losses_after(data_dir, "tinyshakespeare", "ffn", True, torch.float32, steps=50)
    b = _losses_after(data_dir, "tinyshakespeare", "ffn", True, torch.float32, steps=50)
    assert torch.equal(a, b)


def lecture_starts(n_windows: int, batch_size: int, seed: int, steps: int) -> torch.Tensor:
    """The lecture's get_batch, one step at a time: randint(len(data) - block_size, (batch_size,)) on the CPU."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(n_windows, (batch_size,), generator=g) for _ in range(steps)])


def test_window_starts_are_the_lectures_draws_across_blocks():
    steps = 2 * DRAW_BLOCK_STEPS + 37
    draws = WindowDraws(1_003_725, 32, 1337, torch.device("cpu"))
    assert torch.equal(torch.stack([draws(i) for i in range(steps)]), lecture_starts(1_003_725, 32, 1337, steps))


@pytest.mark.parametrize("stop", [1, DRAW_BLOCK_STEPS - 1, DRAW_BLOCK_STEPS, DRAW_BLOCK_STEPS + 44])
def test_window_draws_resume_anywhere_in_a_block(stop):
    expected = lecture_starts(5000, 8, 7, 3 * DRAW_BLOCK_STEPS)
    first = WindowDraws(5000, 8, 7, torch.device("cpu"))
    for i in range(stop):
        first(i)
    saved = {**first.state_dict(), "step": stop}
    assert saved["generator_step"] <= stop
    resumed = WindowDraws(5000, 8, 7, torch.device("cpu"))
    resumed.load_state_dict(saved)
    assert torch.equal(torch.stack([resumed(i) for i in range(stop, len(expected))]), expected[stop:])
    with pytest.raises(ValueError, match="draws only go forward"):
        resumed(stop)


def test_a_checkpoint_from_before_block_draws_resumes_at_its_step():
    """Older checkpoints hold the generator as it stood after their last step, and no generator_step."""
    g = torch.Generator().manual_seed(7)
    for _ in range(100):
        torch.randint(5000, (8,), generator=g)
    resumed = WindowDraws(5000, 8, 7, torch.device("cpu"))
    resumed.load_state_dict({"generator": g.get_state(), "step": 100})
    assert torch.equal(resumed(100), lecture_starts(5000, 8, 7, 101)[100])


def test_a_gpu_generator_state_in_a_checkpoint_is_refused_by_name():
    draws = WindowDraws(5000, 8, 7, torch.device("cpu"))
    philox_state = torch.zeros(16, dtype=torch.uint8)  # what torch.Generator("cuda").get_state() returns
    with pytest.raises(CheckpointError, match="not a CPU generator's.*delete it"):
        draws.load_state_dict({"generator": philox_state, "step": 10})


def test_a_trainer_checkpointed_mid_block_ends_where_an_uninterrupted_one_does(data_dir):
    stop, steps = DRAW_BLOCK_STEPS + 44, DRAW_BLOCK_STEPS + 120
    whole = make_trainer(data_dir, "tinyshakespeare", "ffn", steps=steps)
    for i in range(steps):
        whole.train_step(i)
    first = make_trainer(data_dir, "tinyshakespeare", "ffn", steps=steps)
    for i in range(stop):
        first.train_step(i)
    first.state.step = stop
    saved = copy.deepcopy(first.state_dict())
    resumed = make_trainer(data_dir, "tinyshakespeare", "ffn", steps=steps)
    resumed.load_state_dict(saved)
    for i in range(stop, steps):
        resumed.train_step(i)
    assert torch.equal(resumed.state.step_losses, whole.state.step_losses)


def test_samples_decode_and_start_with_the_prompt(data_dir):
    trainer = make_trainer(data_dir, "korean-chatbot", "bigram")
    corpus = load_corpus(DataConfig("korean-chatbot"), data_dir)
    text = trainer.sample(corpus.tokenizer, "안녕", 30)
    assert text.startswith("안녕") and len(text) == 32


# -- defaults keep today's numbers ------------------------------------------------------------------

# Computed on main at 7226870, before the loss strategies and the schedule keys existed: the first and last
# minibatch losses, then final train and val loss, of 40 default steps (batch 16, context 32, seed 1337), float32,
# on a CPU with AVX-512.
BEFORE = {
    ("tinyshakespeare", "bigram"): (5.063570976257324, 5.031852722167969, 5.036917686462402, 5.0429887771606445),
    ("tinyshakespeare", "ffn"): (4.610045909881592, 2.812415361404419, 2.811150312423706, 2.8322999477386475),
    ("korean-chatbot", "bigram"): (7.681853294372559, 7.608047962188721, 7.592560291290283, 7.58408260345459),
    ("korean-chatbot", "ffn"): (7.139391899108887, 3.8664464950561523, 3.775832176208496, 3.7868432998657227),
}
# Float32 rounding follows the CPU's vector kernels, and 40 AdamW steps magnify it. Measured spread of these
# values across kernel paths (benchmarks/kernel_spread.py, results/bench/kernel_spread.txt): ATEN_CPU_CAPABILITY
# default vs avx2 on an AMD EPYC without AVX-512, up to 1.3e-5 (Korean FFN); either of those vs the AVX-512
# values above, up to 5.1e-5. The bound is four times the largest spread.
FLOAT32_BOUND = 2e-4
# The same steps in float64 (default dtype float64 from the model's init on), measured at 2715147 with
# benchmarks/kernel_spread.py: its step losses agree across kernel paths to 1e-15. The final losses are scored
# on a float32 logits table (exact_loss casts it), so they hold to float32's rounding of them.
BEFORE_FLOAT64 = {
    ("tinyshakespeare", "bigram"): (5.230756762563549, 4.986927303723156, 5.094064712524414, 5.09484338760376),
    ("tinyshakespeare", "ffn"): (4.572464655578057, 2.7907777337160136, 2.8047399520874023, 2.8231441974639893),
    ("korean-chatbot", "bigram"): (7.542417779681424, 7.464423967367353, 7.471494197845459, 7.474390029907227),
    ("korean-chatbot", "ffn"): (7.152971347973702, 3.869827124359947, 3.771732807159424, 3.779935359954834),
}


def pinned_run(data_dir, dataset: str, kind: str, dtype: torch.dtype) -> tuple[tuple[float, ...], Recorder]:
    corpus = load_corpus(DataConfig(dataset), data_dir)
    config = TrainConfig(steps=40, batch_size=16, context_length=32, device="cpu")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(1337)
        model = build_model(ModelConfig(kind), corpus.tokenizer.vocab_size, 32)
        trainer = Trainer(model, corpus, config, torch.device("cpu"))
    finally:
        torch.set_default_dtype(previous)
    recorder = Recorder()
    # The pins were computed with 2 torch threads; the Korean FFN's sums round differently with another count
    # (~1e-5 after 40 steps), and earlier tests may have changed it.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        final = trainer.run(recorder)
    finally:
        torch.set_num_threads(threads)
    steps = trainer.state.step_losses
    return (float(steps[0]), float(steps[-1]), final["final_train_loss"], final["final_val_loss"]), recorder


@pytest.mark.parametrize("dataset, kind", list(BEFORE))
def test_default_config_gives_the_losses_of_before(data_dir, dataset, kind):
    """What a user sees in float32 on any x86-64 CPU: the values of before, within the kernels' spread."""
    got, recorder = pinned_run(data_dir, dataset, kind, torch.float32)
    assert got == pytest.approx(BEFORE[dataset, kind], abs=FLOAT32_BOUND)
    assert not recorder.steps("lr"), "a constant lr is not logged as a curve"


@pytest.mark.parametrize("dataset, kind", list(BEFORE_FLOAT64))
def test_default_config_in_float64_gives_the_pinned_losses_exactly(data_dir, dataset, kind):
    got, _ = pinned_run(data_dir, dataset, kind, torch.float64)
    want = BEFORE_FLOAT64[dataset, kind]
    assert got[:2] == pytest.approx(want[:2], abs=1e-12), "float64 step losses"
    assert got[2:] == pytest.approx(want[2:], abs=1e-6), "final losses, scored on a float32 table"


# -- the loss strategy ------------------------------------------------------------------------------


def test_the_loss_strategy_follows_what_the_model_declares(data_dir):
    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    assert isinstance(make_trainer(data_dir, "tinyshakespeare", "ffn").loss, PairTableLoss)
    assert isinstance(context_trainer(corpus).loss, PerPositionLoss)
    # fast_path off still scores the splits exactly, but takes each step over B x T positions
    direct = make_trainer(data_dir, "tinyshakespeare", "bigram", fast_path=False).loss
    assert isinstance(direct, PairTableLoss) and not direct.fast_step


# -- evaluation of context models ---------------------------------------------------------------


def test_context_eval_windows_are_the_same_for_every_variant_seed_and_repeat(data_dir):
    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    a = context_trainer(corpus, batch_size=8, seed=1337, lr=1e-3)
    b = context_trainer(corpus, batch_size=64, seed=7, lr=3e-2, precision="fp32")
    for split in ("val_windows", "train_windows"):
        wa, wb = getattr(a.loss, split), getattr(b.loss, split)
        assert torch.equal(wa.starts, wb.starts) and torch.equal(wa.first, wb.first)
    assert a.loss.train_windows.tokens == a.loss.val_windows.tokens, "train is scored on as many tokens as val"
    first = a.evaluate()
    assert a.evaluate() == first, "a repeat scores the same windows"
    assert b.evaluate() == first, "same weights, other batch size and seed: the same numbers"


@pytest.mark.parametrize("scoring", ["all-positions", "second-half"])
@pytest.mark.parametrize("context_length", [16, 7, 1])
def test_every_val_token_is_scored_exactly_once(data_dir, context_length, scoring):
    corpus = load_corpus(DataConfig("korean-chatbot"), data_dir)
    trainer = context_trainer(corpus, context_length=context_length, eval_scoring=scoring)
    windows, n = trainer.loss.val_windows, len(corpus.val)
    scored = torch.zeros(n, dtype=torch.long)
    for i, (start, first) in enumerate(zip(windows.starts.tolist(), windows.first.tolist(), strict=True)):
        targets = range(start + 1 + first, start + 1 + windows.length)  # target at offset k has k + 1 tokens before it
        scored[targets.start : targets.stop] += 1
        if scoring == "second-half" and i > 0:
            assert first + 1 >= context_length / 2, f"window {i}: a scored token with {first + 1} tokens of context"
        if scoring == "all-positions" and i < len(windows.starts) - 1:
            assert first == 0 and start == i * context_length, f"window {i}: not the {i}th consecutive window"
    assert scored[0] == 0 and bool((scored[1:] == 1).all()), "each val token after the first scored once"
    assert trainer.loss.eval_tokens == n - 1


def test_context_val_loss_equals_the_loss_over_the_whole_split_in_one_pass(data_dir):
    """The stand-in reads one token back, so under second-half scoring every scored token sees all it needs:
    the windowed mean must equal cross_entropy over the whole val split computed in one sequence."""
    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    trainer = context_trainer(corpus, eval_scoring="second-half")
    with torch.no_grad():
        logits, _ = trainer.model(corpus.val[None, :-1])
        whole = F.cross_entropy(logits[0].double(), corpus.val[1:])
    assert trainer.evaluate()["val_loss"] == pytest.approx(float(whole), abs=1e-6)


def test_all_positions_scoring_gives_each_window_start_no_context(data_dir):
    """Under all-positions scoring the inputs at 0, T, 2T, ... open a window: the stand-in sees no token
    before them there. Built by hand: logits = current(x_i) + previous(x_(i-1)) unless i opens a window."""
    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    T = 16
    trainer = context_trainer(corpus, context_length=T)
    model, val = trainer.model, corpus.val
    n_inputs = len(val) - 1
    last_start = n_inputs - T  # the last window is aligned to the end of the split
    covered = (math.ceil(last_start / T)) * T  # inputs before this lie in the consecutive windows
    i = torch.arange(n_inputs)
    opens_window = (i < covered) & (i % T == 0)
    with torch.no_grad():
        logits = model.current(val[:-1]) + model.previous(val[:-1].roll(1)) * (~opens_window)[:, None]
        expected = F.cross_entropy(logits.double(), val[1:])
    assert trainer.evaluate()["val_loss"] == pytest.approx(float(expected), abs=1e-6)


def test_context_model_trains_and_reports_floor_and_tokens(data_dir):
    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    trainer = context_trainer(corpus, steps=60, lr=3e-2, precision="bf16")
    recorder = Recorder()
    final = trainer.run(recorder)
    first = next(v for k, v, s in recorder.points if k == "val_loss" and s == 0)
    assert final["final_val_loss"] < first - 0.3
    assert final["eval_tokens"] == len(corpus.val) - 1
    assert final["bigram_floor"] == pytest.approx(bigram_floor(pair_counts(corpus.train, corpus.tokenizer.vocab_size)))
    assert final["excess_loss"] == pytest.approx(final["final_train_loss"] - final["bigram_floor"])
    assert trainer.model.training, "evaluation puts the model back in train mode"


# -- schedule, clipping, betas ----------------------------------------------------------------------


def test_cosine_schedule_warms_up_from_zero_then_ends_at_min_lr(data_dir):
    trainer = make_trainer(
        data_dir,
        "tinyshakespeare",
        "bigram",
        steps=100,
        lr=1e-2,
        lr_schedule="cosine",
        warmup_steps=10,
        min_lr=1e-3,
        eval_interval=50,
    )
    recorder = Recorder()
    trainer.run(recorder)
    lr = {s: v for k, v, s in recorder.points if k == "lr"}
    assert sorted(lr) == list(range(1, 101))
    warmup = [lr[s] for s in range(1, 11)]
    assert warmup[0] <= 1e-2 / 10 and all(b > a for a, b in zip(warmup, warmup[1:], strict=False)), (
        "a linear climb from 0"
    )
    assert max(lr.values()) == pytest.approx(1e-2)
    decay = [lr[s] for s in range(11, 101)]
    assert all(b < a for a, b in zip(decay, decay[1:], strict=False))
    assert lr[100] == pytest.approx(1e-3)
    assert lr[55] == pytest.approx((1e-2 + 1e-3) / 2, rel=0.05), "half way down at half the decay"
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3), "the optimizer used them"


def test_constant_schedule_with_warmup_logs_its_lr(data_dir):
    trainer = make_trainer(data_dir, "tinyshakespeare", "bigram", steps=40, lr=1e-2, warmup_steps=5)
    recorder = Recorder()
    trainer.run(recorder)
    lr = {s: v for k, v, s in recorder.points if k == "lr"}
    assert lr[1] < lr[5] < lr[6] == lr[40] == pytest.approx(1e-2)


def test_grad_clip_bounds_the_gradient_norm_the_optimizer_sees(data_dir):
    def norms_seen(**train):
        trainer = make_trainer(data_dir, "tinyshakespeare", "ffn", steps=20, **train)
        norms = []
        trainer.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: norms.append(
                float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.params])))
            )
        )
        trainer.run(Recorder())
        return norms

    assert min(norms_seen()) > 0.05, "unclipped gradients are larger than the clip below"
    assert max(norms_seen(grad_clip=0.05)) <= 0.05 * (1 + 1e-4)


def test_betas_reach_the_optimizer(data_dir):
    trainer = make_trainer(data_dir, "tinyshakespeare", "bigram", betas=(0.8, 0.95))
    assert trainer.optimizer.param_groups[0]["betas"] == (0.8, 0.95)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("lr_schedule", "linear", "unknown schedule 'linear'; choices: constant, cosine"),
        ("min_lr", 0.1, "must be <= lr (0.001), got 0.1"),
        ("warmup_steps", 100, "must be < steps (100), got 100"),
        ("warmup_steps", -1, "must be >= 0"),
        ("betas", (0.9,), "must be two numbers in [0, 1), got [0.9]"),
        ("betas", (0.9, 1.0), "must be two numbers in [0, 1)"),
        ("grad_clip", -1.0, "must be >= 0 (0 = off)"),
    ],
)
def test_problems_name_each_bad_training_key(key, value, message):
    found = dict(TrainConfig(**{"steps": 100, key: value}).problems())
    assert list(found) == [key]
    assert message in found[key]


def test_default_training_keys_have_no_problems():
    assert TrainConfig().problems() == []
    assert (
        TrainConfig(lr_schedule="cosine", warmup_steps=100, min_lr=1e-4, grad_clip=1.0, betas=(0.9, 0.95)).problems()
        == []
    )


# -- loss noise and curve sizes ---------------------------------------------------------------------


def test_loss_noise_is_nan_when_the_run_is_too_short_for_its_window():
    noise = torch.randn(LOSS_NOISE_MIN_STEPS, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert math.isnan(loss_noise(noise[:-1]))
    assert loss_noise(noise) == pytest.approx(1.0, rel=0.2)
    assert math.isnan(loss_noise(noise[:300])), "300 steps: the last 30 steps hold no window of 51"


def _tiny_corpus() -> Corpus:
    text = "abcabcabdabc" * 50
    tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode_tensor(text)
    return Corpus(tokenizer, ids[:500], ids[500:], 500, len(ids) - 500)


def test_curves_hold_at_least_about_50_points_and_at_most_about_2000():
    corpus = _tiny_corpus()

    def points(**train):
        torch.manual_seed(0)
        config = TrainConfig(**{"batch_size": 4, "context_length": 8, **train})
        recorder = Recorder()
        Trainer(
            build_model(ModelConfig("bigram"), corpus.tokenizer.vocab_size, 8), corpus, config, torch.device("cpu")
        ).run(recorder)
        return len(recorder.steps("val_loss")), len(recorder.steps("batch_loss"))

    evals, batches = points(steps=120)  # the default cadence on a short run
    assert 50 <= evals <= 121 and batches == 120
    evals, batches = points(steps=2500, eval_interval=1)  # asking for 2,500 evaluations is widened
    assert 1000 <= evals <= 2001 and 1000 <= batches <= 2001


def test_a_token_cap_scores_a_fixed_subset_of_both_splits(data_dir):
    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    a, b = (
        PerPositionLoss(PreviousTokenModel(96, 16), None, corpus.train, corpus.val, 16, max_tokens=1000)
        for _ in range(2)
    )
    assert a.val_windows.tokens == a.train_windows.tokens == a.eval_tokens == 1000
    assert torch.equal(a.val_windows.starts, b.val_windows.starts) and torch.equal(
        a.val_windows.first, b.val_windows.first
    )


# -- no host syncs inside a step ----------------------------------------------------------------------

# Ops that make the host wait for a GPU: reading a value back (.item(), float(), a Python if on a tensor),
# or sizing an output from the data (nonzero, bincount, unique, masked_select, boolean indexing).
SYNCING_OPS = (
    "aten._local_scalar_dense",
    "aten.nonzero",
    "aten.bincount",
    "aten._unique",
    "aten.unique",
    "aten.masked_select",
    "aten.repeat_interleave",
    "aten.item",
    "aten.equal",
    "aten.is_nonzero",
)


class OpRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Every ATen op that runs while it is active (what the device would be asked to do)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _syncing(ops):
    return sorted({op for op in ops if op.startswith(SYNCING_OPS)})


SYNC_FREE_CASES = {
    "bigram-english": ("tinyshakespeare", {"kind": "bigram"}, {}),  # dense pair counts
    "bigram-korean": ("korean-chatbot", {"kind": "bigram"}, {}),  # a large vocabulary: table rows + pair ids
    "ffn-korean": ("korean-chatbot", {"kind": "ffn"}, {}),
    "gpt-clip-cosine": (
        "tinyshakespeare",
        {"kind": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16},
        {"grad_clip": 1.0, "lr_schedule": "cosine", "warmup_steps": 2},
    ),
}


@pytest.mark.parametrize("case", list(SYNC_FREE_CASES))
def test_a_sync_free_step_asks_the_device_for_nothing_and_computes_the_same_losses(case, data_dir):
    """The check a GPU needs, on a CPU: the step records no op that reads a value back to the host."""
    dataset, model, train = SYNC_FREE_CASES[case]
    corpus = load_corpus(DataConfig(dataset), data_dir)
    config = TrainConfig(**{"steps": 30, "batch_size": 8, "context_length": 16, **train})
    made = {}
    for sync_free in (False, True):
        torch.manual_seed(0)
        model_ = build_model(ModelConfig(**model), corpus.tokenizer.vocab_size, config.context_length)
        made[sync_free] = Trainer(model_, corpus, config, torch.device("cpu"), sync_free=sync_free)
    for i in range(25):
        made[False].train_step(i)
        made[True].train_step(i)
    with OpRecorder() as recorded:
        for i in range(25, 30):
            made[True].train_step(i)
    assert recorded.ops, "the recorder saw the step"
    assert _syncing(recorded.ops) == [], f"{case}: the step syncs with the device"
    for i in range(25, 30):
        made[False].train_step(i)
    difference = (made[True].state.step_losses - made[False].state.step_losses).abs().max().item()
    assert difference <= 1e-5
    if case == "bigram-korean":  # the CPU default takes the subset-rows path, which does sync: the recorder sees it
        with OpRecorder() as default_path:
            made[False].loss.step_loss(made[False].sample_starts(30))
        assert "aten.nonzero.default" in default_path.ops


def test_a_stacked_step_asks_the_device_for_nothing(data_dir):
    from harness.train.stacking import StackedTrainer

    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    for model in ({"kind": "ffn"}, {"kind": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16}):
        trainers = []
        for seed in (1, 2):
            config = TrainConfig(steps=10, batch_size=8, context_length=16, seed=seed, grad_clip=1.0)
            torch.manual_seed(seed)
            trainers.append(
                Trainer(
                    build_model(ModelConfig(**model), corpus.tokenizer.vocab_size, 16),
                    corpus,
                    config,
                    torch.device("cpu"),
                    sync_free=True,
                )
            )
        stack = StackedTrainer(trainers)
        stack.train_step(0)
        with OpRecorder() as recorded:
            stack.train_step(1)
        assert recorded.ops and _syncing(recorded.ops) == [], model["kind"]


# -- curve points on a fixed subset, final losses exact -------------------------------------------------------


def test_curve_points_score_a_fixed_subset_and_the_final_losses_the_whole_split(data_dir):
    """A context model's curve points score ``eval_curve_tokens`` targets of each split, on windows that are
    the same for every seed and batch size; the run's final losses are the whole windows' (the exact ones)."""
    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    T, tokens = 16, 4096
    trainer = context_trainer(corpus, context_length=T, steps=20, eval_curve_tokens=tokens)
    other = context_trainer(corpus, model_seed=1, context_length=T, batch_size=4, seed=7, eval_curve_tokens=tokens)
    for key in ("train_loss", "val_loss"):
        data, windows = trainer.loss.curve_windows[key]
        assert windows.tokens == tokens
        assert torch.equal(windows.starts, other.loss.curve_windows[key][1].starts), "the same windows for all"
        # by hand: each window's scored targets, from the model on that window alone
        losses = []
        with torch.no_grad():
            for start, first in zip(windows.starts.tolist(), windows.first.tolist(), strict=True):
                x, y = data[start : start + T], data[start + 1 : start + T + 1]
                logits, _ = trainer.model(x[None])
                losses.append(F.cross_entropy(logits[0, first:].double(), y[first:], reduction="none"))
        expected = float(torch.cat(losses).mean())
        assert trainer.evaluate(final=False)[key] == pytest.approx(expected, abs=1e-6)
    recorder = Recorder()
    final = trainer.run(recorder)
    last_curve = [v for k, v, s in recorder.points if k == "val_loss" and s == 20]
    assert last_curve == [pytest.approx(trainer.evaluate(final=False)["val_loss"], abs=1e-9)]
    assert final["final_val_loss"] == pytest.approx(trainer.evaluate()["val_loss"], abs=1e-9)
    assert final["final_val_loss"] != pytest.approx(last_curve[0], abs=1e-4), "the final loss is not the subset's"
    assert final["eval_tokens"] == len(corpus.val) - 1


def test_position_wise_models_score_every_curve_point_exactly(data_dir):
    trainer = make_trainer(data_dir, "tinyshakespeare", "bigram", eval_curve_tokens=16)
    assert trainer.evaluate(final=False) == trainer.evaluate()
