"""Tasks and their records: parsing with line-numbered errors, and the two real-data loaders."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .wordnet import LEXNAMES, WORDNET_DIR, glosses_by_class

METRICS = ("exact_match", "rouge_l")
MAX_FIELD_CHARS = 20_000  # one prompt or completion; longer text is a client mistake, not data


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str


@dataclass
class Task:
    """One dataset of a stream. `metric` is how its test split is scored."""

    name: str
    train: list[Example]
    test: list[Example] = field(default_factory=list)
    metric: str = "exact_match"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise DataError(f"unknown metric {self.metric!r}; use one of {METRICS}", param="metric")
        if not self.train:
            raise DataError(f"task {self.name!r} has no training examples", param="train")


def _record(obj: object, line: int, max_chars: int | None = MAX_FIELD_CHARS) -> Example:
    if not isinstance(obj, dict):
        raise DataError("each record must be a JSON object", line=line)
    prompt = obj.get("prompt")
    completion = obj.get("completion", obj.get("answer"))
    if prompt is None:
        raise DataError('missing field "prompt"', line=line, param="prompt")
    if completion is None:
        raise DataError('missing field "completion" (or "answer")', line=line, param="completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise DataError('"prompt" and "completion" must be strings', line=line)
    if not prompt.strip() or not completion.strip():
        raise DataError('"prompt" and "completion" must not be empty', line=line)
    if max_chars is not None and max(len(prompt), len(completion)) > max_chars:
        raise DataError(f"example longer than {max_chars} characters", line=line)
    for key, text in (("prompt", prompt), ("completion", completion)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800": no character at all
            raise DataError(f'"{key}" holds an unpaired surrogate escape (\\ud800-\\udfff)', line=line) from None
    return Example(prompt=prompt, completion=completion)


def parse_records(
    data: bytes | str, *, max_records: int = 100_000, max_chars: int | None = MAX_FIELD_CHARS
) -> list[Example]:
    """Parse JSONL (one object per line) or a JSON array. Validates everything before returning."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise DataError("file is not valid UTF-8", line=line) from exc
    else:
        text = data
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise DataError("file is empty")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON array: {exc.msg}", line=exc.lineno) from exc
        if not isinstance(items, list) or not items:
            raise DataError("a JSON file must hold a non-empty array of records")
        if len(items) > max_records:
            raise DataError(f"more than {max_records} records")
        return [_record(obj, i + 1, max_chars) for i, obj in enumerate(items)]
    out: list[Example] = []
    # records end at "\n" only (a trailing "\r" is JSON whitespace): U+2028, U+0085 and the other
    # characters `str.splitlines` breaks at are legal inside a JSON string
    for i, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", line=i) from exc
        out.append(_record(obj, i, max_chars))
        if len(out) > max_records:
            raise DataError(f"more than {max_records} records", line=i)
    if not out:
        raise DataError("file has no records")
    return out


def to_jsonl(records: list[Example]) -> bytes:
    """The inverse of `parse_records`: one {"prompt", "completion"} object per line."""
    return "".join(json.dumps({"prompt": e.prompt, "completion": e.completion}) + "\n" for e in records).encode()


def read_records(path: str | Path, max_chars: int | None = MAX_FIELD_CHARS) -> list[Example]:
    return parse_records(Path(path).read_bytes(), max_chars=max_chars)


# --- TRACE-500 --------------------------------------------------------------------------------

TRACE_METRICS = {
    "C-STANCE": "exact_match",
    "FOMC": "exact_match",
    "NumGLUE-cm": "exact_match",
    "NumGLUE-ds": "exact_match",
    "ScienceQA": "exact_match",
    "MeetingBank": "rouge_l",
    "Py150": "rouge_l",
    "20Minuten": "rouge_l",
}
MIXED_STREAM = ("C-STANCE", "FOMC", "NumGLUE-cm", "NumGLUE-ds", "ScienceQA")


def load_trace(
    root: str | Path,
    names: tuple[str, ...] = MIXED_STREAM,
    *,
    n_train: int = 500,
    n_test: int = 100,
    answer_letter_only: bool = True,
) -> list[Task]:
    """TRACE-500 tasks from `root`. MeetingBank has no train split: its eval split stands in.

    With `answer_letter_only`, ScienceQA keeps only the answer letter (first line) so that it is a
    classification-like task scored by exact match; its explanations are dropped.
    """
    tasks = []
    for name in names:
        folder = Path(root) / name
        train_file = folder / "train.json"
        if not train_file.exists():
            train_file = folder / "eval.json"  # MeetingBank: eval stands in for train
        train = read_records(train_file, max_chars=None)[:n_train]  # trusted benchmark data
        test = read_records(folder / "test.json", max_chars=None)[:n_test]
        if name == "ScienceQA" and answer_letter_only:
            train, test = ([Example(e.prompt, e.completion.split("\n")[0].strip()) for e in s] for s in (train, test))
        tasks.append(Task(name, train, test, TRACE_METRICS.get(name, "rouge_l")))
    return tasks


# --- WordNet supersenses ----------------------------------------------------------------------

WORDNET_CLASSES = (
    ("animal", "plant", "food", "body"),
    ("artifact", "location", "person", "group"),
    ("feeling", "cognition", "communication", "state"),
    ("act", "event", "time", "phenomenon"),
    ("substance", "quantity", "possession", "attribute"),
    ("object", "process", "shape", "relation"),
)
WORDNET_TEMPLATE = "Classify the dictionary definition into one of: {labels}.\nDefinition: {gloss}\nClass:"


def wordnet_glosses(root: Path = WORDNET_DIR) -> dict[str, list[str]]:
    """Noun glosses grouped by supersense (the label word after 'noun.')."""
    return glosses_by_class("noun", root)


def wordnet_label_sets(n: int, seed: int = 0, size: int = 4) -> tuple[tuple[str, ...], ...]:
    """`n` distinct label sets of `size` noun supersenses, drawn at random (for streams longer
    than the six fixed WORDNET_CLASSES, such as the serving benchmark's 32 tasks)."""
    labels = sorted({lex[5:] for lex in LEXNAMES if lex.startswith("noun.") and lex != "noun.Tops"})
    rng = random.Random(seed)
    out: list[tuple[str, ...]] = []
    while len(out) < n:
        pick = tuple(sorted(rng.sample(labels, size)))
        if pick not in out:
            out.append(pick)
    return tuple(out)


def load_wordnet(
    *,
    n_tasks: int = 5,
    n_train: int = 200,
    n_test: int = 100,
    seed: int = 0,
    root: Path = WORDNET_DIR,
    classes: tuple[tuple[str, ...], ...] = WORDNET_CLASSES,
) -> list[Task]:
    """A same-template classification stream: task i tells apart 4 supersenses (its label set)."""
    if not 1 <= n_tasks <= len(classes):
        raise DataError(f"n_tasks must be 1..{len(classes)}", param="n_tasks")
    groups = wordnet_glosses(root)
    rng = random.Random(seed)
    tasks = []
    for i, labels in enumerate(classes[:n_tasks]):
        per = (n_train + n_test) // len(labels) + 1
        rows: list[Example] = []
        for label in labels:
            glosses = rng.sample(groups[label], per)
            prompt_labels = ", ".join(labels)
            rows += [Example(WORDNET_TEMPLATE.format(labels=prompt_labels, gloss=g), label) for g in glosses]
        rng.shuffle(rows)
        tasks.append(
            Task(f"wordnet-{i}-{'-'.join(labels)}", rows[:n_train], rows[n_train : n_train + n_test], "exact_match")
        )
    return tasks
