"""The multi-task serving engine on a tiny random Llama: a batch mixing tasks answers as each
row would alone and as the learner does; the adapter pool's budget, pins and LRU order."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

from treelora_core.errors import ConfigError
from treelora_core.serving import AdapterPool, GenParams, Server, factors_from_state, held_back

from .conftest import toy_task

TASKS = [toy_task("alpha", "apple"), toy_task("beta", "zebra"), toy_task("gamma", "mango")]


@pytest.fixture(scope="module")
def trained(tiny_base, tokenizer):  # type: ignore[no-untyped-def]
    from treelora_core.config import StreamConfig, TrainConfig, TreeConfig
    from treelora_core.learner import ContinualLearner

    cfg = StreamConfig(
        train=TrainConfig(epochs=3, batch_size=4, lr=5e-3, max_length=48),
        tree=TreeConfig(min_own_blocks=2, max_pulls=3, probe_batch=4),
    )
    learner = ContinualLearner(copy.deepcopy(tiny_base), tokenizer, cfg)
    for t in TASKS:
        learner.learn(t)
    return learner


def serve(learner, tiny_base, budget: int = 1 << 30):  # type: ignore[no-untyped-def]
    pool = AdapterPool(budget)
    server = Server(copy.deepcopy(tiny_base), learner.tok, ("q_proj", "v_proj"), pool)
    return server, lambda k: factors_from_state(learner.bank.state(k), learner.cfg.lora.scaling)


def rows(learner, n_per_task: int = 2):  # type: ignore[no-untyped-def]
    prompts, paths = [], []
    for t in TASKS:
        for e in t.test[:n_per_task]:
            prompts.append(learner.fmt.encode_prompt(e.prompt, 8))
            paths.append(learner.path_for(t.name))
    return prompts, paths


def test_mixed_batch_equals_one_request_at_a_time_and_the_learner(trained, tiny_base) -> None:  # type: ignore[no-untyped-def]
    server, load = serve(trained, tiny_base)
    prompts, paths = rows(trained)
    keys = {k for p in paths for names in p.values() for k in names}
    params = [GenParams(max_new_tokens=4)] * len(prompts)
    with server.pool.holding(keys, load):
        batched = server.generate(prompts, paths, params)
        alone = [
            server.generate([p], [q], [GenParams(max_new_tokens=4)])[0] for p, q in zip(prompts, paths, strict=True)
        ]
    assert batched == alone
    texts = [g.text for g in batched]
    assert texts == trained.generate(
        [trained.tok.decode(p, skip_special_tokens=True) for p in prompts], paths, max_new_tokens=4
    )
    assert [t.strip() for t in texts[::2]] == ["apple", "zebra", "mango"]  # each row followed its task


def test_prefill_logits_match_row_by_row(trained, tiny_base) -> None:  # type: ignore[no-untyped-def]
    server, load = serve(trained, tiny_base)
    prompts, paths = rows(trained, 1)
    keys = {k for p in paths for names in p.values() for k in names}
    from treelora_core.batching import left_pad

    with server.pool.holding(keys, load):
        ids, mask = left_pad(prompts, trained.tok.pad_token_id)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with server.rows(paths), torch.no_grad():
            mixed = server.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        for i, (p, q) in enumerate(zip(prompts, paths, strict=True)):
            with server.rows([q]), torch.no_grad():
                one = server.model(input_ids=torch.tensor([p])).logits[0, -1]
            assert torch.allclose(mixed[i], one, atol=1e-4)


def test_sampling_is_seeded_and_stop_strings_cut(trained, tiny_base) -> None:  # type: ignore[no-untyped-def]
    server, load = serve(trained, tiny_base)
    prompts, paths = rows(trained, 1)
    keys = {k for p in paths for names in p.values() for k in names}
    hot = GenParams(max_new_tokens=6, do_sample=True, temperature=5.0, top_p=0.95, seed=7)
    with server.pool.holding(keys, load):
        a = server.generate(prompts, paths, [hot] * 3)
        b = server.generate(prompts, paths, [hot] * 3)
        c = server.generate(prompts, paths, [GenParams(max_new_tokens=6, do_sample=True, temperature=5.0, seed=8)] * 3)
        cut = server.generate(prompts[:1], paths[:1], [GenParams(max_new_tokens=6, stop=("pl",))])
        short = server.generate(prompts[:1], paths[:1], [GenParams(max_new_tokens=1)])
    assert a == b and a != c
    assert all(g.tokens <= 6 for g in a)
    assert cut[0].text == " ap" and cut[0].finish_reason == "stop"
    assert short[0].tokens == 1 and short[0].finish_reason == "length"


def test_scoring_prefers_the_learned_answer(trained, tiny_base) -> None:  # type: ignore[no-untyped-def]
    server, load = serve(trained, tiny_base)
    prompts, paths = rows(trained, 1)
    keys = {k for p in paths for names in p.values() for k in names}
    comp = [trained.fmt.completion_ids(w) for w in ("apple", "zebra")]
    with server.pool.holding(keys, load):
        lp = server.score([prompts[0]] * 2, comp, [paths[0]] * 2)
    assert lp[0] > lp[1]


def test_scores_equal_the_full_log_softmax(trained, tiny_base) -> None:  # type: ignore[no-untyped-def]
    """Scoring keeps logits only at the choices' positions; the log-likelihoods are the ones the
    whole sequence's log-softmax gives, for choices of different lengths in one batch."""
    server, load = serve(trained, tiny_base)
    prompts, paths = rows(trained, 1)
    comps = [trained.fmt.completion_ids(w) for w in ("apple", "a much longer answer than that", "z")]
    keys = {k for p in paths for names in p.values() for k in names}
    with server.pool.holding(keys, load):
        got = server.score(prompts, comps, paths)
        want = []
        for p, c, q in zip(prompts, comps, paths, strict=True):
            with server.rows([q]):
                logits = server.model(input_ids=torch.tensor([p + c])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            want.append(float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(c))))
    assert got == pytest.approx(want, abs=1e-3)


def test_tiny_temperatures_sample_the_greedy_answer_and_bad_parameters_are_refused(trained, tiny_base) -> None:  # type: ignore[no-untyped-def]
    """A temperature near 0 is greedy decoding, not NaN probabilities that fail the batch; what
    torch could not take (a seed of 2**64, a NaN) never becomes a GenParams."""
    server, load = serve(trained, tiny_base)
    prompts, paths = rows(trained, 1)
    keys = {k for p in paths for names in p.values() for k in names}
    cold = GenParams(max_new_tokens=4, do_sample=True, temperature=1e-40, seed=1)
    with server.pool.holding(keys, load):
        assert server.generate(prompts, paths, [cold] * 3) == server.generate(prompts, paths, [GenParams(4)] * 3)
    for bad in (
        {"seed": 2**64},
        {"seed": -1},
        {"temperature": 0.0},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_p": float("inf")},
        {"max_new_tokens": 0},
    ):
        with pytest.raises(ConfigError) as err:
            GenParams(**bad)  # type: ignore[arg-type]
        assert err.value.param == next(iter(bad))


def test_streamed_pieces_add_up_to_the_answer_and_arrive_step_by_step(trained, tiny_base) -> None:  # type: ignore[no-untyped-def]
    """`emit` hears each row's text as the steps finish; the pieces of a row add up to its answer
    (cut at a stop string, which is never streamed), and the answers equal unstreamed ones."""
    server, load = serve(trained, tiny_base)
    prompts, paths = rows(trained, 1)
    keys = {k for p in paths for names in p.values() for k in names}
    # row 0 samples hot (seeded) so that its six tokens are visible text, not the end token the
    # trained tiny model would repeat after its one-token label
    hot = GenParams(max_new_tokens=6, ignore_eos=True, do_sample=True, temperature=50.0, seed=3)
    params = [hot, GenParams(max_new_tokens=6, stop=("br",)), GenParams(2)]
    heard: list[tuple[int, str, object]] = []
    with server.pool.holding(keys, load):
        plain = server.generate(prompts, paths, params)
        streamed = server.generate(prompts, paths, params, emit=lambda i, t, g: heard.append((i, t, g)))
    assert streamed == plain
    for i, answer in enumerate(plain):
        mine = [(t, g) for j, t, g in heard if j == i]
        assert "".join(t for t, _ in mine) == answer.text
        assert [g for _, g in mine if g is not None] == [answer] and mine[-1][1] == answer  # the answer comes last
    assert plain[1].text == " ze" and "b" not in "".join(t for j, t, _ in heard if j == 1)  # row 1: zebra
    first = [k for k, (i, _, _) in enumerate(heard) if i == 0]
    assert len(first) > 2  # row 0 streamed piece by piece, interleaved with the other rows
    assert heard.index(next(h for h in heard if h[0] == 2 and h[2] is not None)) < first[-1]  # row 2 ended first


def test_step_level_rows_join_and_leave_between_steps_and_answer_as_alone(trained, tiny_base) -> None:  # type: ignore[no-untyped-def]
    """Rows of three tasks with different lengths, greedy and seeded-sampled, join a running
    step-level batch in three waves; each answer equals the row's answer alone, a finished row
    leaves at once, and the cache keeps no column that no remaining row attends to."""
    from treelora_core.step_batch import StepBatch, StepRow

    server, load = serve(trained, tiny_base)
    prompts, paths = rows(trained, 2)
    keys = {k for p in paths for names in p.values() for k in names}
    hot = {"do_sample": True, "temperature": 50.0, "ignore_eos": True}
    params = [
        GenParams(max_new_tokens=2 + 3 * (i % 3), ignore_eos=True) if i % 2 else GenParams(2 + i, seed=i, **hot)
        for i in range(len(prompts))
    ]
    params[0] = GenParams(max_new_tokens=1)  # done by its first token: never joins the batch
    heard: dict[int, list[str]] = {}

    @dataclass(eq=False)
    class Row(StepRow):
        tag: int = 0

    todo = [
        Row(p, q, g, emit=lambda t, _, i=i: heard.setdefault(i, []).append(t), tag=i)
        for i, (p, q, g) in enumerate(zip(prompts, paths, params, strict=True))
    ]
    with server.pool.holding(keys, load):
        alone = [server.generate([p], [q], [g])[0] for p, q, g in zip(prompts, paths, params, strict=True)]
        batch: StepBatch[Row] = StepBatch(server)
        got, steps = {}, []  # steps: the rows of each step
        for wave in (todo[:2], todo[2:4], todo[4:]):
            got.update({r.tag: g for r, g in batch.join(wave)})
            for _ in range(2):
                steps.append({r.tag for r in batch.rows})
                got.update({r.tag: g for r, g in batch.step()})
                assert all(r.tag not in got for r in batch.rows)  # finished rows have left
                assert bool(batch._mask.any(0)[0]) if len(batch) else True  # no dead leading column
        while len(batch):
            got.update({r.tag: g for r, g in batch.step()})
    assert [got[i] for i in range(len(prompts))] == alone
    assert all("".join(heard[i]) == alone[i].text for i in range(len(prompts)))
    assert any(min(tags) < 2 <= max(tags) for tags in steps if tags)  # earlier and later waves shared steps
    assert not any(0 in tags for tags in steps)
    assert alone[0].tokens == 1 and sum(g.tokens for g in alone) > 2 * len(alone)


@pytest.mark.parametrize(
    ("text", "stop", "held"),
    [
        ("hello", (), 0),
        ("hello wor", ("world",), 3),
        ("hello w", ("world", "wx"), 1),
        ("abc", ("bcd", "c"), 2),
        ("caf\ufffd", (), 1),
        ("a\ufffd\ufffd", ("zz",), 2),
        ("", ("ab",), 0),
    ],
)
def test_held_back_keeps_a_stop_strings_start_and_unfinished_characters(
    text: str, stop: tuple[str, ...], held: int
) -> None:
    assert held_back(text, stop) == held


def test_adapter_pool_budget_pins_and_lru(trained) -> None:  # type: ignore[no-untyped-def]
    names = sorted(trained.bank.names())
    sizes = [sum(t.numel() * 4 for t in trained.bank.state(n).values()) for n in names[:2]]
    pool = AdapterPool(budget_bytes=sum(sizes) - 1)  # no room for both

    def load(k: str):  # type: ignore[no-untyped-def]
        return factors_from_state(trained.bank.state(k), 1.0)

    pool.acquire({names[0]}, load)
    pool.acquire({names[1]}, load)  # both pinned: over budget, yet nothing is evicted
    assert names[0] in pool and names[1] in pool and pool.evictions == 0
    pool.release({names[0], names[1]})  # unpinned: the least recently used one goes
    assert names[0] not in pool and names[1] in pool and pool.evictions == 1
    pool.acquire({names[1]}, load)
    assert (pool.hits, pool.misses) == (1, 2)
    pool.release({names[1]})
