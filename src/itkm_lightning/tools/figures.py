"""PNG figures of a run: ranked lists, pseudo-label quality, 2-D embeddings, text-prototype similarity.

Pure functions from arrays/paths to a PNG file. Plots use ``matplotlib.figure.Figure`` directly (no
pyplot), so nothing touches a global figure state or needs a display; image grids are PIL canvases.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from itkm_lightning.data.schema import GROUP_NAMES, SCENARIOS
from itkm_lightning.fileio import atomic_write

QUALITY_METRICS = (("num_clusters", "clusters"), ("num_outliers", "outliers"), ("ari", "adjusted Rand index"),
                   ("nmi", "normalised mutual information"))
MATCH_COLOURS = {True: "#1a9641", False: "#d7191c", None: "#bbbbbb"}
QUERY_COLOUR = "#2b83ba"

RankedRow = tuple[str, Sequence[tuple[str, float, "bool | None"]]]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: str | Path) -> Path:
    atomic_write(path, lambda handle: fig.savefig(handle, format="png"))  # never half a PNG under the name
    return Path(path)


THUMB = (64, 128)  # (W, H) of a person crop in the ranked-list grid
BORDER, GAP, CAPTION = 4, 6, 16


def ranked_list_grid(rows: Sequence[RankedRow], path: str | Path, title: str = "") -> Path:
    """One row per query: the query (blue frame) then its ranked matches, framed green (same identity),
    red (another identity) or grey (unknown), with rank and cosine score above each.

    Composed with PIL: matplotlib spends seconds creating dozens of image axes; a canvas takes milliseconds.
    """
    from PIL import Image, ImageDraw, ImageFont

    from itkm_lightning.data.dataset import load_rgb

    if not rows:
        raise ValueError("ranked_list_grid needs at least one query")
    columns = 1 + max(len(matches) for _, matches in rows)
    cell_w, cell_h = THUMB[0] + 2 * BORDER + GAP, THUMB[1] + 2 * BORDER + CAPTION + GAP
    top = 2 * CAPTION if title else 0
    canvas = Image.new("RGB", (columns * cell_w + GAP, top + len(rows) * cell_h + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=11)
    if title:
        draw.text((GAP, GAP), title, fill="black", font=ImageFont.load_default(size=13))
    for r, (query, matches) in enumerate(rows):
        cells = [(query, "query", QUERY_COLOUR)] + [
            (match_path, f"{c}: {score:.2f}", MATCH_COLOURS[correct])
            for c, (match_path, score, correct) in enumerate(matches, start=1)
        ]
        for c, (image_path, caption, colour) in enumerate(cells):
            x, y = GAP + c * cell_w, top + GAP + r * cell_h
            draw.text((x, y), caption, fill="black", font=font)
            y += CAPTION
            draw.rectangle([x, y, x + THUMB[0] + 2 * BORDER - 1, y + THUMB[1] + 2 * BORDER - 1], fill=colour)
            canvas.paste(load_rgb(image_path).resize(THUMB, Image.BICUBIC), (x + BORDER, y + BORDER))
    atomic_write(path, lambda handle: canvas.save(handle, format="PNG"))  # never half a PNG under the name
    return Path(path)


def ranked_rows(bench, query_features, gallery_features, query_indices: Sequence[int], top_k: int) -> list[RankedRow]:
    """``ranked_list_grid`` rows: each chosen query's top-k gallery images by cosine similarity (features are
    L2-normalised), skipping gallery images of the query's identity *and* camera (the usual junk rule)."""
    rows = []
    for i in query_indices:
        query = bench.query[i]
        scores = np.asarray(gallery_features @ query_features[i], dtype=np.float64)
        junk = np.asarray([s.pid == query.pid and s.camid == query.camid for s in bench.gallery])
        scores[junk] = -np.inf
        order = np.argsort(-scores, kind="stable")[:top_k]
        order = order[np.isfinite(scores[order])]
        rows.append((query.path, [(bench.gallery[j].path, float(scores[j]), bench.gallery[j].pid == query.pid)
                                  for j in order]))
    return rows


def ranked_title(bench, top_k: int) -> str:
    return f"{bench.name}: query and top-{top_k} (green = same identity, red = other)"


def read_pseudo_label_log(metrics_csv: str | Path) -> dict[str, dict[str, list[float]]]:
    """``{block: {metric: [value per re-clustering]}}`` from a CSVLogger ``metrics.csv``
    (columns ``pseudo/<block>/<metric>``; rows without them are other logs)."""
    series: dict[str, dict[str, list[float]]] = {}
    with Path(metrics_csv).open(newline="") as handle:
        for row in csv.DictReader(handle):
            for column, value in row.items():
                if not (column and column.startswith("pseudo/") and value not in ("", None)):
                    continue
                _, block, metric = column.split("/", 2)
                series.setdefault(block, {}).setdefault(metric, []).append(float(value))
    return series


def pseudo_label_curves(metrics_csv: str | Path, path: str | Path, title: str = "") -> Path | None:
    """Clusters, outliers, ARI and NMI per (scenario, group) block at each re-clustering; None without pseudo logs."""
    from matplotlib.ticker import MaxNLocator

    series = read_pseudo_label_log(metrics_csv)
    if not series:
        return None
    fig = _figure(10, 6.5)
    axes = fig.subplots(2, 2).ravel()
    for ax, (metric, label) in zip(axes, QUALITY_METRICS):
        for block, values in sorted(series.items()):
            points = values.get(metric, [])
            ax.plot(range(len(points)), points, marker="o", markersize=3, label=block)
        ax.set_title(label, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric.startswith("num_"):
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("re-clustering (0 = fit start, then after each epoch)", fontsize=8)
        ax.grid(alpha=0.3)
        if metric in ("ari", "nmi"):
            ax.set_ylim(-0.05, 1.05)
    axes[0].legend(fontsize=8, title="block", title_fontsize=8)
    fig.suptitle(title or "pseudo-label quality (ARI/NMI against hidden identities: monitoring only)", fontsize=10)
    return _save(fig, path)


def two_d_embedding(features: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """(N, 2) points: t-SNE (PCA to 50-d first) or PCA; PCA for fewer than 10 points, where t-SNE is meaningless."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    features = np.asarray(features, dtype=np.float32)
    if method not in ("tsne", "pca"):
        raise ValueError(f"method must be tsne or pca, got {method!r}")
    if len(features) < 3:
        raise ValueError(f"a 2-D embedding needs at least 3 points, got {len(features)}")
    if method == "pca" or len(features) < 10:
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    if features.shape[1] > 50:
        features = PCA(n_components=min(50, len(features)), random_state=seed).fit_transform(features)
    perplexity = float(min(30.0, (len(features) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def embedding_scatter(points: np.ndarray, identities: Sequence[str], groups: Sequence[str], path: str | Path,
                      title: str = "") -> Path:
    """Two panels of the same 2-D points: coloured by identity (cycling colours) and by (scenario, group)."""
    from matplotlib import colormaps

    fig = _figure(12, 5.5)
    by_id, by_group = fig.subplots(1, 2)
    ids = {name: i for i, name in enumerate(dict.fromkeys(identities))}
    palette = colormaps["tab20"]
    by_id.scatter(points[:, 0], points[:, 1], s=8, c=[palette(ids[i] % 20) for i in identities])
    by_id.set_title(f"coloured by identity ({len(ids)} identities, colours repeat)", fontsize=10)
    names = list(dict.fromkeys(groups))
    group_palette = colormaps["tab10"]
    for k, name in enumerate(names):
        mask = np.asarray([g == name for g in groups])
        by_group.scatter(points[mask, 0], points[mask, 1], s=8, color=group_palette(k % 10), label=name)
    by_group.set_title("coloured by scenario / group", fontsize=10)
    by_group.legend(fontsize=8, markerscale=2)
    for ax in (by_id, by_group):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def group_label(scenario: str, group: int) -> str:
    return f"{scenario} / {GROUP_NAMES.get(scenario, ('g0', 'g1'))[group]}"


def scenario_similarity(text_features: np.ndarray, cluster_scenario: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(C x C cosine matrix, S x S mean cosine between scenarios' prototypes, scenario indices present).

    The diagonal means leave out each prototype's similarity to itself (always 1, it says nothing)."""
    feats = np.asarray(text_features, dtype=np.float64)
    feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    scen = np.asarray(cluster_scenario)
    if scen.shape != (len(feats),):
        raise ValueError(f"cluster_scenario must have one entry per prototype ({len(feats)}), got shape {scen.shape}")
    present = [i for i in range(len(SCENARIOS)) if (scen == i).any()]
    sim = feats @ feats.T
    mean = np.zeros((len(present), len(present)))
    for a, sa in enumerate(present):
        for b, sb in enumerate(present):
            block = sim[np.ix_(scen == sa, scen == sb)]
            if sa == sb:
                n = block.shape[0]
                mean[a, b] = (block.sum() - np.trace(block)) / max(n * n - n, 1)
            else:
                mean[a, b] = block.mean()
    return sim, mean, present


def prototype_similarity(text_features: np.ndarray, cluster_scenario: np.ndarray, path: str | Path,
                         max_full: int = 2000) -> Path:
    """Cosine similarity of the text prototypes: the scenario-by-scenario mean (left) and, for at most
    ``max_full`` clusters, the full matrix sorted by scenario (right)."""
    sim, mean, present = scenario_similarity(text_features, cluster_scenario)
    scen = np.asarray(cluster_scenario)
    full = len(sim) <= max_full
    fig = _figure(11 if full else 5.5, 5)
    axes = fig.subplots(1, 2 if full else 1, squeeze=False)[0]
    image = axes[0].imshow(mean, cmap="viridis")
    labels = [SCENARIOS[i] for i in present]
    axes[0].set_xticks(range(len(present)), labels)
    axes[0].set_yticks(range(len(present)), labels)
    for a in range(len(present)):
        for b in range(len(present)):
            bright = image.norm(mean[a, b]) > 0.6  # viridis turns yellow at the top: dark text there
            axes[0].text(b, a, f"{mean[a, b]:.2f}", ha="center", va="center", color="k" if bright else "w", fontsize=10)
    axes[0].set_title("mean cosine between scenarios' prototypes\n(diagonal: distinct prototypes only)", fontsize=9)
    fig.colorbar(image, ax=axes[0], shrink=0.8)
    if full:
        order = np.argsort(scen, kind="stable")
        image = axes[1].imshow(sim[np.ix_(order, order)], cmap="viridis", interpolation="nearest")
        edges = np.cumsum([int((scen == i).sum()) for i in present])[:-1] - 0.5
        for edge in edges:
            axes[1].axhline(edge, color="w", linewidth=1)
            axes[1].axvline(edge, color="w", linewidth=1)
        axes[1].set_title(f"all {len(sim)} prototypes, sorted by scenario ({', '.join(labels)})", fontsize=9)
        fig.colorbar(image, ax=axes[1], shrink=0.8)
    return _save(fig, path)
