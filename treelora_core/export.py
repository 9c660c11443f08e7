"""Flatten a task's path to a standard PEFT LoRA adapter (adapter_model.safetensors +
adapter_config.json) that `peft.PeftModel.from_pretrained` loads with the same outputs.

Where a block sums k adapters (o_lora), their factors are concatenated into one rank-k*r update
(B1 A1 + B2 A2 = [B1 B2][A1; A2]); blocks with fewer are zero-padded, which is exact.
"""

from __future__ import annotations

import json
from pathlib import Path as FsPath
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from .lora import MultiLoRALinear

if TYPE_CHECKING:
    from .learner import ContinualLearner


def export_peft(
    learner: ContinualLearner, task: str | None, out_dir: str | FsPath, base_model_name: str = ""
) -> FsPath:
    path = learner.path_for(task)
    r = learner.cfg.lora.r
    k_max = max((len(v) for v in path.values()), default=1)
    rank = r * k_max
    names = {id(m): n for n, m in learner.model.named_modules() if isinstance(m, MultiLoRALinear)}
    tensors: dict[str, torch.Tensor] = {}
    for (block, _), mod in learner.bank.modules.items():
        adapters = path.get(block, ())
        a = torch.zeros(rank, mod.base.in_features)
        b = torch.zeros(mod.base.out_features, rank)
        for i, n in enumerate(adapters):
            a[i * r : (i + 1) * r] = mod.lora_A[n].detach().cpu()
            b[:, i * r : (i + 1) * r] = mod.lora_B[n].detach().cpu()
        prefix = f"base_model.model.{names[id(mod)]}"
        tensors[f"{prefix}.lora_A.weight"] = a.contiguous()
        tensors[f"{prefix}.lora_B.weight"] = b.contiguous()
    out = FsPath(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": learner.cfg.lora.scaling * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": sorted(learner.cfg.lora.target_modules),
        "fan_in_fan_out": False,
        "inference_mode": True,
        "base_model_name_or_path": base_model_name,
        "use_rslora": False,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out
