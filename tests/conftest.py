from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from treelora_core.config import StreamConfig, TrainConfig, TreeConfig
from treelora_core.data import Example, Task
from treelora_core.learner import ContinualLearner
from treelora_core.models import load_base, prepare, smollm2_dir, tiny_llama

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="session")
def tiny_base(tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    model, _ = prepare(tiny_llama(tokenizer), tokenizer)
    return model


@pytest.fixture
def tiny_learner(tiny_base, tokenizer):  # type: ignore[no-untyped-def]
    def make(strategy: str, **kw: object) -> ContinualLearner:
        cfg = StreamConfig(
            strategy=strategy,
            train=TrainConfig(epochs=2, batch_size=4, lr=5e-3, max_length=48),
            tree=TreeConfig(min_own_blocks=2, max_pulls=3, probe_batch=4),
            **kw,
        )  # type: ignore[arg-type]
        return ContinualLearner(copy.deepcopy(tiny_base), tokenizer, cfg)

    return make


def toy_task(name: str, word: str, n: int = 24) -> Task:
    """A task a tiny model can learn in a few steps: always answer `word`."""
    rows = [Example(f"Item {i} of {name}: what is it?", word) for i in range(n)]
    return Task(name, rows[: n - 6], rows[n - 6 :], "exact_match")


@pytest.fixture(scope="session")
def smollm2():  # type: ignore[no-untyped-def]
    return load_base()
