"""The long stream: 20 WordNet tasks in 4 families of related tasks, arriving interleaved.

| family | template | label set in the prompt | tasks |
|---|---|---|---|
| `noun-listed` | "Classify the dictionary definition into one of: {labels}. ..." | yes | 6 (4 noun supersenses each) |
| `noun-open` | "Definition: ... What kind of thing is defined here? One word:" | no | 5 (3 noun supersenses each) |
| `verb-open` | "Definition: ... What kind of action is defined here? One word:" | no | 5 (3 verb supersenses each) |
| `antonym` | 'Name the opposite of the word "{word}". ...' | no (open vocabulary) | 4 (noun, verb, adj, adv) |

The family of each task is known here, never to the learner. Tasks arrive round-robin over the
families, in a fixed shuffled family order per round, so related tasks are never adjacent by
construction. The data are the same for every seed (the benchmark's seed sets the training
order inside a task, the init and the validation split).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from treelora_core.data import WORDNET_CLASSES, WORDNET_TEMPLATE, Example, Task
from treelora_core.wordnet import glosses_by_class, synsets

NOUN_OPEN = (
    ("animal", "artifact", "time"),
    ("plant", "location", "feeling"),
    ("food", "person", "act"),
    ("body", "group", "substance"),
    ("cognition", "event", "quantity"),
)
VERB_OPEN = (
    ("motion", "communication", "consumption"),
    ("change", "emotion", "weather"),
    ("contact", "cognition", "perception"),
    ("creation", "social", "body"),
    ("possession", "competition", "stative"),
)
NOUN_OPEN_TEMPLATE = "Definition: {gloss}\nWhat kind of thing is defined here? One word:"
VERB_OPEN_TEMPLATE = "Definition: {gloss}\nWhat kind of action is defined here? One word:"
ANTONYM_TEMPLATE = 'Name the opposite of the word "{word}".\nOpposite:'
ANTONYM_POS = ("noun", "verb", "adj", "adv")


@dataclass(frozen=True)
class FamilyTask:
    task: Task
    family: str


def _classification(
    labels: tuple[str, ...], groups: dict[str, list[str]], template: str, n: int, rng: random.Random
) -> list[Example]:
    per = n // len(labels) + 1
    rows = []
    for label in labels:
        for gloss in rng.sample(groups[label], per):
            rows.append(Example(template.format(labels=", ".join(labels), gloss=gloss), label))
    rng.shuffle(rows)
    return rows


def _antonyms(pos: str, n: int, rng: random.Random) -> list[Example]:
    """One direction per antonym pair (so a pair's reverse never leaks from train to test) and one
    question per word (so a prompt has one answer)."""
    seen: set[frozenset[str]] = set()
    asked: set[str] = set()
    rows = []
    for s in synsets(pos):
        word = s.lemmas[0]
        for ant in s.antonyms:
            pair = frozenset((word, ant))
            if len(pair) == 2 and pair not in seen and word not in asked:
                seen.add(pair)
                asked.add(word)
                rows.append(Example(ANTONYM_TEMPLATE.format(word=word), ant))
    return rng.sample(rows, n)


def family_stream(n_train: int, n_test: int, seed: int = 0) -> list[FamilyTask]:
    """The 20 tasks in arrival order (interleaved families)."""
    rng = random.Random(seed)
    nouns, verbs = glosses_by_class("noun"), glosses_by_class("verb")
    n = n_train + n_test
    families: dict[str, list[Task]] = {"noun-listed": [], "noun-open": [], "verb-open": [], "antonym": []}

    def add(family: str, name: str, rows: list[Example], metric: str = "exact_match") -> None:
        families[family].append(Task(name, rows[:n_train], rows[n_train:n], metric))

    for i, labels in enumerate(WORDNET_CLASSES):
        add("noun-listed", f"noun-listed-{i}", _classification(labels, nouns, WORDNET_TEMPLATE, n, rng))
    for i, kinds in enumerate(NOUN_OPEN):
        add("noun-open", f"noun-open-{i}", _classification(kinds, nouns, NOUN_OPEN_TEMPLATE, n, rng))
    for i, kinds in enumerate(VERB_OPEN):
        add("verb-open", f"verb-open-{i}", _classification(kinds, verbs, VERB_OPEN_TEMPLATE, n, rng))
    for pos in ANTONYM_POS:
        add("antonym", f"antonym-{pos}", _antonyms(pos, n, rng))
    order: list[FamilyTask] = []
    queues = {f: list(ts) for f, ts in families.items()}
    while any(queues.values()):
        names = [f for f in queues if queues[f]]
        rng.shuffle(names)
        order += [FamilyTask(queues[f].pop(0), f) for f in names]
    return order
