"""Can the candidate tasks' own paths route a prompt better than the router? Measured on the long
stream, where the router is weakest (families whose prompts do not name their labels).

    python -m benchmarks.path_scoring --state runs/path-scoring    # -> docs/benchmarks/path-scoring.json

A `treelora` learner learns the long stream's 20 tasks (quick profile, seed 0; saved under
`--state` and reused). For every test prompt the router ranks the tasks; each of its `--top`
best is then run on its own path (one prefill) and scored by its first answer token: the largest
log-probability (`maxlogp`), minus the entropy (`negentropy`), or the gap between the two best
tokens (`margin`). A route is the candidate with the best score alone, or with the score plus
`w` times the router's log-probability of the candidate. `oracle_top` is the share of prompts
whose task is among the candidates (what a perfect second stage would reach). Routing accuracy
is per family and over all prompts.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from treelora_core import persist
from treelora_core.batching import left_pad
from treelora_core.learner import ContinualLearner
from treelora_core.lora import plans_for_rows
from treelora_core.models import load_base

from .continual import method_config
from .families import family_stream
from .long_stream import PROFILES

ROOT = Path(__file__).resolve().parent.parent
SCORES = ("maxlogp", "negentropy", "margin")
WEIGHTS = (0.1, 0.3, 1.0, 3.0)


@torch.no_grad()
def first_token_scores(learner: ContinualLearner, prompts: list[str], tasks: list[str]) -> torch.Tensor:
    """(N, len(SCORES)): each prompt's first answer token on its task's path."""
    out = torch.zeros(len(prompts), len(SCORES))
    for i in range(0, len(prompts), 32):
        enc = [learner.fmt.encode_prompt(p, 8) for p in prompts[i : i + 32]]
        ids, mask = left_pad(enc, learner.tok.pad_token_id)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        plan = plans_for_rows([learner.path_for(t) for t in tasks[i : i + 32]], learner.bank.n_blocks)
        with learner.bank.routed(plan):
            logits = learner.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
        lp = torch.log_softmax(logits[:, -1].float(), -1)
        best = lp.topk(2).values
        out[i : i + len(enc)] = torch.stack([best[:, 0], (lp.exp() * lp).sum(-1), best[:, 0] - best[:, 1]], 1)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, default=ROOT / "runs" / "path-scoring", help="the learner, reused")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prof = PROFILES["quick"]
    stream = family_stream(prof.n_train, prof.n_test)[: prof.n_tasks]
    base, tok = load_base()
    if (args.state / "learner.json").exists():
        learner = persist.load(args.state, copy.deepcopy(base), tok)
    else:
        learner = ContinualLearner(copy.deepcopy(base), tok, method_config("treelora", prof, 0))
        for ft in stream:
            learner.learn(ft.task)
        persist.save(learner, args.state)
    names, router = learner.router.names, learner.router
    family = {ft.task.name: ft.family for ft in stream}
    prompts = [e.prompt for ft in stream for e in ft.task.test]
    truth = torch.tensor([names.index(ft.task.name) for ft in stream for _ in ft.task.test])
    view = router.views(learner.embed(prompts))[router.route_view]
    top = view.topk(args.top, dim=1).indices  # (N, top)
    feats = torch.stack(
        [first_token_scores(learner, prompts, [names[int(t)] for t in top[:, k]]) for k in range(args.top)], 1
    )  # (N, top, SCORES)
    router_logp = torch.log_softmax(view.gather(1, top) / router.temperature, 1)

    def accuracy(pick: torch.Tensor) -> dict[str, float]:
        right = pick == truth
        out = {"all": round(100 * right.float().mean().item(), 1)}
        for f in sorted(set(family.values())):
            rows = torch.tensor([family[names[int(t)]] == f for t in truth])
            out[f] = round(100 * right[rows].float().mean().item(), 1)
        return out

    res = {"router": accuracy(top[:, 0])}
    res["oracle_top"] = accuracy(torch.where((top == truth[:, None]).any(1), truth, top[:, 0]))
    for j, name in enumerate(SCORES):
        res[name] = accuracy(top.gather(1, feats[:, :, j].argmax(1, keepdim=True))[:, 0])
        for w in WEIGHTS:
            score = feats[:, :, j] + w * router_logp
            res[f"{name}+router*{w}"] = accuracy(top.gather(1, score.argmax(1, keepdim=True))[:, 0])
    out = {"stream": "long", "profile": "quick", "seed": 0, "top": args.top, "prompts": len(prompts), "routing": res}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "path-scoring.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
