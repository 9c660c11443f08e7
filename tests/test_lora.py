from __future__ import annotations

import copy

import torch

from treelora_core.batching import collate, forward_from, lm_loss, model_loss
from treelora_core.config import LoraConfig
from treelora_core.data import Example
from treelora_core.lora import LoRABank, plans_for_rows
from treelora_core.models import Formatter


def _bank(tiny_base) -> LoRABank:  # type: ignore[no-untyped-def]
    return LoRABank(copy.deepcopy(tiny_base), LoraConfig(r=4, alpha=8))


def test_new_adapter_is_identity_and_frozen_base_stays(tiny_base) -> None:  # type: ignore[no-untyped-def]
    bank = _bank(tiny_base)
    ids = torch.randint(0, 1000, (2, 9))
    ref = tiny_base(input_ids=ids).logits
    bank.add("a")
    with bank.routed_path({b: ("a",) for b in range(bank.n_blocks)}):
        assert torch.equal(bank.model(input_ids=ids).logits, ref)
        params = bank.set_trainable({"a"})
        frozen = {k: v.clone() for k, v in bank.model.state_dict().items() if "lora_" not in k}
        opt = torch.optim.SGD(params, lr=0.1)
        for _ in range(2):  # the first step moves B only (A's grad is zero while B is zero)
            opt.zero_grad()
            bank.model(input_ids=ids).logits.square().mean().backward()
            opt.step()
        assert not torch.equal(bank.model(input_ids=ids).logits, ref)
    after = {k: v for k, v in bank.model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)


def test_mixed_batch_equals_rows_alone(tiny_base) -> None:  # type: ignore[no-untyped-def]
    bank = _bank(tiny_base)
    for i, name in enumerate(("a", "b", "c")):
        bank.add(name, seed=i)
        for mod in bank.modules.values():
            torch.nn.init.normal_(mod.lora_B[name], std=0.05)
    paths = [
        {0: ("a",), 1: ("a",), 2: ("b",), 3: ("b",)},
        {0: ("a",), 1: ("c",), 2: ("c",), 3: ("c",)},
        {0: ("a", "b"), 2: ("c",)},
        {},
    ]
    ids = torch.randint(0, 1000, (4, 7))
    with bank.routed(plans_for_rows(paths, bank.n_blocks)):
        mixed = bank.model(input_ids=ids).logits
    for row, path in enumerate(paths):
        with bank.routed_path(path):
            alone = bank.model(input_ids=ids[row : row + 1]).logits
        torch.testing.assert_close(mixed[row : row + 1], alone, rtol=1e-5, atol=1e-5)


def test_forward_from_cached_prefix_matches_full_forward(tiny_base, tokenizer) -> None:  # type: ignore[no-untyped-def]
    fmt = Formatter(tokenizer, max_length=32)
    items = [fmt.encode(Example("short one", "yes")), fmt.encode(Example("a much longer prompt here", "no"))]
    ids, labels = collate(items, tokenizer.pad_token_id)
    captured = {}
    layers = tiny_base.model.layers
    handle = layers[2].register_forward_pre_hook(lambda m, a: captured.setdefault("h", a[0].detach()))
    full = tiny_base(input_ids=ids).logits
    handle.remove()
    resumed = tiny_base.lm_head(forward_from(tiny_base, captured["h"], 2))
    torch.testing.assert_close(resumed, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model_loss(tiny_base, ids, labels), lm_loss(full, labels))


def test_formatter_cuts_long_prompts_in_the_middle(tokenizer) -> None:  # type: ignore[no-untyped-def]
    fmt = Formatter(tokenizer, max_length=24)
    enc = fmt.encode(Example("Instruction first. " + "filler " * 100 + "Answer:", "42"))
    assert len(enc.input_ids) <= 24
    assert enc.labels[: enc.prompt_len] == [-100] * enc.prompt_len
    assert tokenizer.decode(enc.input_ids[enc.prompt_len :], skip_special_tokens=True).strip() == "42"
    assert tokenizer.decode(enc.input_ids[:3]).startswith("Instruction")
