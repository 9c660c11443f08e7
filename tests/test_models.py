from __future__ import annotations

import pytest

from treelora_core.config import StreamConfig
from treelora_core.data import Example
from treelora_core.errors import ConfigError
from treelora_core.learner import ContinualLearner
from treelora_core.models import Formatter, blocks


def test_chat_template_formatting_masks_the_prompt(tokenizer) -> None:  # type: ignore[no-untyped-def]
    fmt = Formatter(tokenizer, chat_template=True, max_length=96)
    enc = fmt.encode(Example("Name a fruit.", "apple"))
    text = tokenizer.decode(enc.input_ids)
    assert "<|im_start|>user" in text and "<|im_start|>assistant" in text
    assert tokenizer.decode(enc.input_ids[enc.prompt_len :], skip_special_tokens=True).strip() == "apple"
    assert all(label == -100 for label in enc.labels[: enc.prompt_len])


def test_any_causal_lm_loads_by_path(tiny_base, tokenizer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tiny_base.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    learner = ContinualLearner.from_pretrained(str(tmp_path), StreamConfig(strategy="seq_lora"))
    assert learner.bank.n_blocks == len(blocks(tiny_base)) == 4
    assert len(learner.bank.modules) == 8  # q_proj and v_proj in each block
    assert all(not p.requires_grad for p in learner.model.parameters())


def test_bad_configs_are_rejected() -> None:
    from treelora_core.config import LoraConfig, TrainConfig

    with pytest.raises(ConfigError):
        LoraConfig(r=-1)
    with pytest.raises(ConfigError):
        TrainConfig(epochs=0)


def test_unknown_strategy_is_rejected(tiny_base, tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="unknown strategy"):
        ContinualLearner(tiny_base, tokenizer, StreamConfig(strategy="nope"))
    assert not any("lora" in n for n, _ in tiny_base.named_modules())  # the model was not touched
