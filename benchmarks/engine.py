"""What applying adapters costs the serving engine, in process (no HTTP, no batching policy):
one batch of `--rows` prompts decoded by the plain base model and by `serving.Server` with every
row on its own task's path (tree-shaped: a shared node on blocks [0, 20), a node per task after).

    python -m benchmarks.engine        # -> docs/benchmarks/serving-engine.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from treelora_core import types as route
from treelora_core.data import load_wordnet, wordnet_label_sets
from treelora_core.models import Formatter, load_base
from treelora_core.serving import AdapterPool, Factors, GenParams, Server, decode


def random_factors(key: str, blocks: range, shapes: dict[str, tuple[int, int]], r: int = 8) -> Factors:
    g = torch.Generator().manual_seed(sum(map(ord, key)))
    return {
        (b, t): (torch.randn(r, i, generator=g) * 0.01, torch.randn(o, r, generator=g) * 0.01)
        for b in blocks
        for t, (o, i) in shapes.items()
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/serving-engine.json"))
    args = ap.parse_args(argv)
    model, tok = load_base()
    fmt = Formatter(tok, max_length=96)
    tasks = load_wordnet(n_tasks=args.rows, n_train=8, n_test=4, seed=7, classes=wordnet_label_sets(args.rows, seed=7))
    prompts = [fmt.encode_prompt(t.test[0].prompt, args.new_tokens) for t in tasks]
    params = [GenParams(max_new_tokens=args.new_tokens, ignore_eos=True)] * args.rows
    server = Server(copy.deepcopy(model), tok, ("q_proj", "v_proj"), AdapterPool(1 << 32))
    n_blocks, split = server.bank.n_blocks, 2 * server.bank.n_blocks // 3
    shapes = {t: (m.base.out_features, m.base.in_features) for (b, t), m in server.bank.modules.items() if b == 0}
    keys = {"shared": range(0, split), **{f"task{i}": range(split, n_blocks) for i in range(args.rows)}}
    server.pool.acquire(set(keys), lambda k: random_factors(k, keys[k], shapes))

    def paths(mix: int) -> list[route.Path]:
        return [
            {b: ("shared",) if b < split else (f"task{i % mix}",) for b in range(n_blocks)} for i in range(args.rows)
        ]

    def timed(fn: object) -> float:
        fn()  # type: ignore[operator]
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            fn()  # type: ignore[operator]
        return (time.perf_counter() - t0) / args.repeats

    out: dict[str, object] = {"rows": args.rows, "new_tokens": args.new_tokens, "repeats": args.repeats}
    plain = timed(lambda: decode(model, tok, prompts, params))
    for mix in (1, 8, 32):
        p = paths(min(mix, args.rows))
        ours = timed(lambda p=p: server.generate(prompts, p, params))
        out[f"mix_{mix}"] = {"plain_s": round(plain, 3), "server_s": round(ours, 3), "ratio": round(plain / ours, 3)}
        print(f"mix {mix}: plain {plain:.2f}s, server {ours:.2f}s, plain/server {plain / ours:.3f}")
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
