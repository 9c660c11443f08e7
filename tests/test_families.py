"""The long stream's tasks: real WordNet data, four families, label lists only where stated,
families interleaved, and the tree-shape statistic it reports."""

from __future__ import annotations

from benchmarks.families import family_stream
from benchmarks.stats import adjusted_rand
from treelora_core.wordnet import glosses_by_class, synsets


def test_wordnet_reader_finds_classes_and_antonyms() -> None:
    verbs = glosses_by_class("verb")
    assert len(verbs) == 15 and len(verbs["motion"]) > 1000
    able = next(s for s in synsets("adj") if s.lemmas[0] == "able")
    assert able.antonyms == ("unable",) and able.lexname == "adj.all"


def test_family_stream_shape() -> None:
    stream = family_stream(n_train=24, n_test=8)
    assert len(stream) == 20
    families = [ft.family for ft in stream]
    assert {f: families.count(f) for f in set(families)} == {
        "noun-listed": 6,
        "noun-open": 5,
        "verb-open": 5,
        "antonym": 4,
    }
    assert len({ft.task.name for ft in stream}) == 20
    # interleaved: every family appears among the first four tasks
    assert len(set(families[:4])) == 4
    for ft in stream:
        task = ft.task
        assert len(task.train) == 24 and len(task.test) == 8
        assert not {e.prompt for e in task.train} & {e.prompt for e in task.test}
        labels = {e.completion for e in task.train + task.test}
        listed = all(all(label in e.prompt for label in labels) for e in task.test)
        # only the noun-listed family names its label set in the prompt
        assert listed == (ft.family == "noun-listed")
    assert family_stream(24, 8)[3].task.test == stream[3].task.test  # the same data every time


def test_adjusted_rand_index() -> None:
    assert adjusted_rand([0, 0, 1, 1], ["a", "a", "b", "b"]) == 1.0
    assert adjusted_rand([0, 0, 0, 0], [0, 1, 2, 3]) == 0.0
    assert adjusted_rand([0, 0, 1, 1, 2, 2], [0, 0, 1, 2, 1, 2]) < 0.5
