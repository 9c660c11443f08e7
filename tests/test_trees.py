from __future__ import annotations

import json

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from treelora_core.adapter_tree import AdapterTree
from treelora_core.kdtree import GradientKDTree, LCBSearch, l1

inserts = st.lists(st.tuples(st.integers(0, 20), st.integers(0, 7)), min_size=1, max_size=12)


@given(inserts)
@settings(max_examples=60, deadline=None)
def test_adapter_tree_paths_cover_every_block_once(ops: list[tuple[int, int]]) -> None:
    tree = AdapterTree(1, 9)
    for i, (rel, b) in enumerate(ops):
        tasks = list(tree.leaves)
        relative = tasks[rel % len(tasks)] if tasks and b > 1 else None
        before = {t: tree.block_map(t) for t in tasks}
        split = tree.insert(f"t{i}", relative=relative, branch_at=max(b, 1) if relative else None)
        tree.check()
        if relative is not None:  # shares the relative's blocks before the branch
            for blk in range(1, split.branch_at):
                assert tree.block_map(f"t{i}")[blk] == tree.block_map(relative)[blk]
        for t, m in before.items():  # a split renames at most the moved blocks of old paths
            moved = split.moved
            for blk, node in m.items():
                now = tree.block_map(t)[blk]
                assert now == node or (moved is not None and node == moved[0] and now == moved[1])
    again = AdapterTree.from_json(json.loads(json.dumps(tree.to_json())))
    assert again.to_json() == tree.to_json()


vectors = st.lists(
    st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=3, max_size=3),
    min_size=2,
    max_size=12,
    unique_by=lambda v: tuple(round(x, 1) for x in v),
)


@given(vectors, st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=3, max_size=3))
@settings(max_examples=60, deadline=None)
def test_lcb_search_agrees_with_brute_force(points: list[list[float]], query: list[float]) -> None:
    tree = GradientKDTree(n_layers=3)
    for p in points:
        tree.insert([torch.tensor([x]) for x in p])
    assert len(tree) == len(points)
    q = torch.tensor(query)

    def dist(sig: list[torch.Tensor]) -> float:
        return l1(q, torch.cat(sig))

    truth = tree.nearest(dist)
    found = LCBSearch(tree, c=2.0).search(dist)  # exact query: best-first LCB is exact
    assert dist(tree.signatures[found]) == dist(tree.signatures[truth])


def test_lcb_needs_fewer_comparisons_than_flat_search() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(8, 16, generator=g) * 5
    tree = GradientKDTree(n_layers=4)
    for i in range(256):
        v = centers[i % 8] + torch.randn(16, generator=g) * 0.3
        tree.insert(list(v.split(4)))
    q = centers[3] + torch.randn(16, generator=g) * 0.3

    def dist(sig: list[torch.Tensor]) -> float:
        return l1(q, torch.cat(sig))

    search = LCBSearch(tree)
    found = search.search(dist)
    assert found == tree.nearest(dist)
    assert search.comparisons < len(tree) / 2  # the tree prunes most tasks
    assert tree.depth() <= 16


def test_branch_rules_on_block_cosines() -> None:
    from treelora_core.strategies.treelora import shared_blocks

    noisy = [0.39, 0.41, 0.58, 0.57, 0.63, 0.71, 0.78, 0.47, 0.65, 0.71]  # a relative, one noisy pull
    stranger = [0.11, 0.12, 0.25, 0.3, 0.23, 0.32, 0.44, 0.35, 0.73, 0.77]
    assert shared_blocks(noisy, 0.5, "first_below") == 0
    assert shared_blocks(noisy, 0.5, "best_prefix") == 10
    assert shared_blocks(stranger, 0.5, "first_below") == 0
    assert shared_blocks(stranger, 0.5, "best_prefix") == 0  # the deep blocks cannot pay back the shallow ones
    assert shared_blocks([0.9, 0.8, 0.2, 0.1], 0.5, "best_prefix") == 2
    assert shared_blocks([0.9, 0.8, 0.9], 0.5, "first_below") == 3
    # median_below: one block's dip between two blocks above the threshold is read as noise ...
    dip = [0.62, 0.59, 0.41, 0.62, 0.58, 0.67, 0.71, 0.71]  # WordNet seed 1's second task, four pulls
    assert shared_blocks(dip, 0.5, "first_below") == 2
    assert shared_blocks(dip, 0.5, "median_below") == 8
    # ... but a low first block (it has one neighbour), or two low blocks in a row, end sharing
    low_first = [0.42, 0.68, 0.63, 0.55, 0.49, 0.65, 0.65]  # long stream: noun-open-0 under verb-open-0
    assert shared_blocks(low_first, 0.5, "median_below") == 0
    assert shared_blocks([0.9, 0.8, 0.4, 0.45, 0.9, 0.9], 0.5, "median_below") == 2
    assert shared_blocks(noisy, 0.5, "median_below") == 0 and shared_blocks(stranger, 0.5, "median_below") == 0
