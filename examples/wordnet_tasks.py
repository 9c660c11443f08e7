"""`python -m examples.wordnet_tasks [DIR]`: three real tasks as JSONL files, for trying the service.

Each task tells apart four WordNet noun classes from a dictionary definition (Debian's
`wordnet-base`, which `./scripts/install` installs): `nature` (animal, plant, food, body),
`things` (artifact, location, person, group) and `mind` (feeling, cognition, communication,
state). Writes `DIR/<task>.jsonl` (training examples) and `DIR/<task>-eval.jsonl` (held-out
examples), one `{"prompt", "completion"}` per line; DIR defaults to `tasks`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from treelora_core.data import load_wordnet, to_jsonl

NAMES = ("nature", "things", "mind")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", type=Path, default=Path("tasks"))
    ap.add_argument("--train", type=int, default=96, help="training examples per task")
    ap.add_argument("--eval", type=int, default=40, help="eval examples per task")
    args = ap.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    for name, task in zip(NAMES, load_wordnet(n_tasks=len(NAMES), n_train=args.train, n_test=args.eval), strict=True):
        (args.dir / f"{name}.jsonl").write_bytes(to_jsonl(task.train))
        (args.dir / f"{name}-eval.jsonl").write_bytes(to_jsonl(task.test))
        print(f"{args.dir}/{name}.jsonl ({len(task.train)} examples), {name}-eval.jsonl ({len(task.test)})")


if __name__ == "__main__":
    main()
