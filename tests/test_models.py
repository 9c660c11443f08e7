from __future__ import annotations

import pytest
import torch

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


def test_the_head_reads_a_contiguous_input_in_batched_generation(tiny_base, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Prefill hands the head a strided view of each row's last position; the hook `prepare`
    installs copies it (a Linear on the view runs as a slow broadcast batched matmul on the CPU),
    which changes no logit."""
    seen: list[bool] = []
    head = tiny_base.get_output_embeddings()
    probe = head.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    try:
        ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
        with torch.no_grad():
            tiny_base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
            strided = tiny_base.model(input_ids=ids).last_hidden_state[:, -1:]
            assert not strided.is_contiguous()
            unhooked = torch.nn.functional.linear(strided, head.weight, head.bias)  # what the head did before
            torch.testing.assert_close(head(strided), unhooked)
    finally:
        probe.remove()
    assert seen and all(seen)
