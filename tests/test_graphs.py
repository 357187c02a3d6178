"""Whole-step graphs (harness/train/graphs.py), tested on a CPU with a stand-in for a CUDA graph.

``ReplayedOps`` keeps the rules that make CUDA graphs hard to use correctly: a capture records the ATen ops of one
step with the tensors they ran on and runs nothing (what it wrote is put back); a replay runs exactly those ops
on exactly that memory, with every Python number frozen at its captured value; an op that reads a value back to
the host cannot be captured. So a trainer that forgot to refresh a static input (the batch, the lr of a
schedule) or that read something back would train differently under it, and these tests would see it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_train import SYNCING_OPS
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from harness.data.corpora import DataConfig, load_corpus
from harness.models.config import ModelConfig
from harness.models.registry import build_model
from harness.train.config import TrainConfig
from harness.train.graphs import WARMUP_STEPS, graph_status
from harness.train.stacking import StackedTrainer
from harness.train.trainer import Trainer


class _Recording(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []
        self.before: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # what each written tensor held first

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name.startswith(SYNCING_OPS):
            raise RuntimeError(f"{name}: operation not permitted when stream is capturing")
        for argument, value in zip(func._schema.arguments, list(args) + list(kwargs.values()), strict=False):
            if argument.alias_info is not None and argument.alias_info.is_write:
                for t in tree_leaves(value):
                    if isinstance(t, torch.Tensor) and id(t) not in self.before:
                        self.before[id(t)] = (t, t.detach().clone())
        out = func(*args, **kwargs)
        if not name.startswith("profiler."):
            self.ops.append((func, args, kwargs, out))
        return out


class ReplayedOps:
    """A CPU graph backend: ``capture`` records, ``replay`` reruns the recorded ops on the captured tensors."""

    def __init__(self):
        self.captures = 0
        self.replays = 0

    def eager(self, body):
        return body()

    def capture(self, body):
        recording = _Recording()
        rng = torch.get_rng_state()
        with recording:
            out = body()
        with torch.no_grad():  # a capture runs nothing: undo what recording it did
            for tensor, before in recording.before.values():
                tensor.copy_(before)
        torch.set_rng_state(rng)
        self.captures += 1

        @torch.no_grad()
        def replay():
            self.replays += 1
            for func, args, kwargs, captured in recording.ops:
                result = func(*args, **kwargs)
                for old, new in zip(tree_leaves(captured), tree_leaves(result), strict=True):
                    if isinstance(old, torch.Tensor) and new.data_ptr() != old.data_ptr():
                        old.copy_(new)  # the kernel writes where the captured one wrote

        return replay, out


CASES = {
    "bigram-english": ("tinyshakespeare", {"kind": "bigram"}, {}),  # dense pair counts
    "ffn-korean": ("korean-chatbot", {"kind": "ffn"}, {}),  # a 1,265-character table
    "gpt-clip-cosine": (
        "tinyshakespeare",
        {"kind": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0},
        {"grad_clip": 0.05, "lr_schedule": "cosine", "warmup_steps": 5, "lr": 3e-3},
    ),
}
STEPS = 24


def trainer(corpus, model: dict, train: dict, graphs=None, seed: int = 1337) -> Trainer:
    config = TrainConfig(**{"steps": STEPS, "batch_size": 8, "context_length": 16, "seed": seed, **train})
    torch.manual_seed(seed)
    built = build_model(ModelConfig(**model), corpus.tokenizer.vocab_size, config.context_length)
    return Trainer(built, corpus, config, torch.device("cpu"), sync_free=True, graphs=graphs)


class NeverCaptured(ReplayedOps):
    """The graph path's optimizer (capturable AdamW, lr tensor), every step eager."""

    def capture(self, body):
        raise AssertionError("not captured")


@pytest.mark.parametrize("case", list(CASES))
def test_a_replayed_step_trains_exactly_as_the_eager_step(case, data_dir):
    dataset, model, train = CASES[case]
    corpus = load_corpus(DataConfig(dataset), data_dir)
    graphs = ReplayedOps()
    eager, graphed = trainer(corpus, model, train), trainer(corpus, model, train, graphs)
    same_optimizer = trainer(corpus, model, train, NeverCaptured())
    same_optimizer.captured.warmup = STEPS
    for i in range(STEPS):
        for t in (eager, graphed, same_optimizer):
            t.train_step(i)
    assert graphs.captures == 1 and graphs.replays == STEPS - WARMUP_STEPS
    assert graphed.captured.failure is None
    assert graph_status(graphed) == "replayed" and graph_status(eager) is None  # the run's cuda_graphs tag
    # bit for bit against the same steps run eagerly with the same optimizer
    assert torch.equal(graphed.state.step_losses, same_optimizer.state.step_losses)
    for a, b in zip(graphed.model.parameters(), same_optimizer.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # capturable AdamW computes its bias correction in float32 tensors: 1.4e-6 from the default after 24 steps
    torch.testing.assert_close(graphed.state.step_losses, eager.state.step_losses, rtol=0, atol=1e-5)
    # the stand-in is strict: a replay that ignored the schedule's lr or the new batch would not match
    assert len(set(eager.state.step_losses.tolist())) == STEPS


def test_the_stand_in_catches_a_step_input_that_is_not_refreshed(data_dir):
    """The backend is only worth its tests if it fails a trainer that forgets a static input."""
    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    eager, graphed = trainer(corpus, {"kind": "ffn"}, {}), trainer(corpus, {"kind": "ffn"}, {}, ReplayedOps())
    for i in range(STEPS):
        if i == WARMUP_STEPS + 1:  # captured: from now on train_step refreshes a buffer the graph does not read
            graphed._starts = graphed._starts.clone()
        eager.train_step(i)
        graphed.train_step(i)
    assert (graphed.state.step_losses - eager.state.step_losses).abs().max().item() > 1e-3


def test_the_stand_in_catches_a_schedule_whose_lr_the_graph_never_reads(data_dir, monkeypatch):
    """A trainer that gives the optimizer a new lr tensor each step, instead of filling the one the graph read,
    trains at the capture step's lr from then on: the stand-in must show it, as a CUDA graph would."""

    def replace_lr(optimizer, lr):
        for group in optimizer.param_groups:
            group["lr"] = torch.tensor(lr) if torch.is_tensor(group["lr"]) else lr

    monkeypatch.setattr("harness.train.trainer.set_lr", replace_lr)
    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    train = {"lr_schedule": "cosine", "warmup_steps": 5, "lr": 3e-3}
    graphed = trainer(corpus, {"kind": "ffn"}, train, ReplayedOps())
    eager = trainer(corpus, {"kind": "ffn"}, train, NeverCaptured())  # the same optimizer, every step eager
    eager.captured.warmup = STEPS
    for i in range(STEPS):
        graphed.train_step(i)
        eager.train_step(i)
    assert graphed.captured.captured
    same = WARMUP_STEPS + 1  # the steps up to and including the capture read each lr afresh
    assert torch.equal(graphed.state.step_losses[:same], eager.state.step_losses[:same])
    assert (graphed.state.step_losses - eager.state.step_losses).abs().max().item() > 1e-4


def test_a_step_that_reads_a_value_back_is_not_captured_and_trains_eagerly(data_dir):
    corpus = load_corpus(DataConfig("korean-chatbot"), data_dir)
    eager = trainer(corpus, {"kind": "bigram"}, {})
    graphed = trainer(corpus, {"kind": "bigram"}, {}, ReplayedOps())
    graphed.loss.sync_free = False  # bincount sizes its output from the largest id: a read-back
    for i in range(WARMUP_STEPS):
        eager.train_step(i)
        graphed.train_step(i)
    with pytest.warns(UserWarning, match="capture failed, training eagerly instead: RuntimeError: aten.bincount"):
        graphed.train_step(WARMUP_STEPS)
    eager.train_step(WARMUP_STEPS)
    for i in range(WARMUP_STEPS + 1, STEPS):
        eager.train_step(i)
        graphed.train_step(i)
    assert not graphed.captured.captured
    assert graph_status(graphed).startswith("eager: capture failed: RuntimeError: aten.bincount")
    torch.testing.assert_close(graphed.state.step_losses, eager.state.step_losses, rtol=0, atol=1e-5)


def test_a_checkpoint_moves_between_graphed_and_eager_runs(data_dir):
    """A checkpoint holds the lr as a number; each trainer runs AdamW its own way after loading one."""
    dataset, model, train = CASES["gpt-clip-cosine"]
    corpus = load_corpus(DataConfig(dataset), data_dir)
    whole = trainer(corpus, model, train)
    for i in range(STEPS):
        whole.train_step(i)
    for first_graphs, then_graphs in ((ReplayedOps(), None), (None, ReplayedOps())):
        first = trainer(corpus, model, train, first_graphs)
        for i in range(STEPS // 2):
            first.train_step(i)
        first.state.step = STEPS // 2
        saved = copy.deepcopy(first.state_dict())
        assert all(isinstance(group["lr"], float) for group in saved["optimizer"]["param_groups"])
        resumed = trainer(corpus, model, train, then_graphs)
        resumed.load_state_dict(saved)
        for i in range(STEPS // 2, STEPS):
            resumed.train_step(i)
        torch.testing.assert_close(resumed.state.step_losses, whole.state.step_losses, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["ffn-korean", "gpt-clip-cosine"])
def test_a_replayed_stack_trains_as_separate_eager_runs(case, data_dir):
    dataset, model, train = CASES[case]
    corpus = load_corpus(DataConfig(dataset), data_dir)
    seeds = (1337, 1338, 1339)
    graphs = ReplayedOps()
    stack = StackedTrainer([trainer(corpus, model, train, graphs, seed) for seed in seeds])
    alone = [trainer(corpus, model, train, seed=seed) for seed in seeds]
    for i in range(STEPS):
        stack.train_step(i)
        for t in alone:
            t.train_step(i)
    assert graphs.captures == 1 and graphs.replays == STEPS - WARMUP_STEPS
    assert graph_status(stack) == "replayed"
    for s, t in enumerate(alone):
        torch.testing.assert_close(stack.step_losses[s], t.state.step_losses, rtol=0, atol=1e-5)


def test_cuda_graphs_is_ignored_off_a_gpu(data_dir):
    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    plain = trainer(corpus, {"kind": "bigram"}, {"cuda_graphs": True})
    assert plain.captured is None and plain.graph_backend is None


def test_a_run_shorter_than_the_warmup_says_it_was_never_captured(data_dir):
    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    short = trainer(corpus, {"kind": "bigram"}, {"steps": WARMUP_STEPS}, ReplayedOps())
    for i in range(WARMUP_STEPS):
        short.train_step(i)
    assert graph_status(short) == "eager: the run ended before the capture"
