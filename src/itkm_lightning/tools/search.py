"""``itkm search``: the top-k gallery images for query images (``clustering.knn``: faiss inner product, torch fallback)."""

from __future__ import annotations

import argparse
import functools
import json
import os
import warnings
from pathlib import Path

import numpy as np

from itkm_lightning.clustering.knn_search import _faiss_available, flat_index, knn
from itkm_lightning.errors import ConfigError, DataFormatError, DataUnavailableError, MissingPackageError
from itkm_lightning.fileio import atomic_path, atomic_write_json
from itkm_lightning.tools.embedding_files import FEATURES_FILE, is_embedding_dir, load_embeddings

INDEX_NAME = "faiss.index"


def normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so inner product = cosine similarity."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def resolve_backend(backend: str) -> str:
    """``faiss`` or ``torch``: auto picks faiss when it imports; asking for a missing faiss names the fix."""
    if backend not in ("auto", "faiss", "torch"):
        raise ConfigError(f"backend must be auto, faiss or torch, got {backend!r}")
    if backend == "auto":
        return "faiss" if _faiss_available() else "torch"
    if backend == "faiss" and not _faiss_available():
        raise MissingPackageError("--backend faiss needs faiss: pip install faiss-cpu (or faiss-gpu), or use --backend torch")
    return backend


class GalleryIndex:
    """Exact cosine search over a gallery with the clustering's top-k search (``knn``): faiss ``IndexFlatIP`` when
    faiss imports, else a torch matmul.

    ``save``/``load`` persist the faiss index next to the gallery's features, so repeated searches skip
    the build (the flat index is a copy of the features; its value is for faiss-gpu or IVF swaps later).
    """

    def __init__(self, gallery: np.ndarray, backend: str = "auto", index=None) -> None:
        backend = resolve_backend(backend)
        self.gallery = normalize(gallery)
        self.backend = backend
        self.index = index
        if backend == "faiss" and index is None:
            self.index = flat_index(self.gallery)

    def __len__(self) -> int:
        return len(self.gallery)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices), each (Q, min(k, len)), best first; scores are cosine similarities."""
        queries = normalize(queries)
        if queries.shape[1] != self.gallery.shape[1]:
            raise ConfigError(f"query features are {queries.shape[1]}-d but the gallery's are "
                              f"{self.gallery.shape[1]}-d; "
                              "embed both with the same model and --feature")
        return knn(queries, self.gallery, min(k, len(self.gallery)), backend=self.backend, faiss_index=self.index)

    def save(self, path: str | Path) -> None:
        if self.backend == "faiss":
            import faiss

            with atomic_path(path) as tmp:
                faiss.write_index(self.index, str(tmp))

    @classmethod
    def for_embedding_dir(cls, folder: Path, gallery: np.ndarray, backend: str = "auto") -> GalleryIndex:
        """Load ``folder/faiss.index`` when it is newer than the features and matches them, else build and save it."""
        saved = folder / INDEX_NAME
        backend = resolve_backend(backend)
        if backend == "faiss" and saved.is_file() and saved.stat().st_mtime >= (folder / FEATURES_FILE).stat().st_mtime:
            import faiss

            try:
                index = faiss.read_index(str(saved))
            except RuntimeError as err:  # a damaged index is only a cache of the features: rebuild it
                warnings.warn(f"{saved} cannot be read ({str(err).strip().splitlines()[0]}); rebuilding it from "
                              f"{FEATURES_FILE}", stacklevel=2)
                index = None
            if index is not None and index.ntotal == len(gallery) and index.d == gallery.shape[1]:
                return cls(gallery, "faiss", index=index)
        built = cls(gallery, backend)
        built.save(saved)
        return built


def build_parser() -> argparse.ArgumentParser:
    from itkm_lightning.tools.embed import add_model_arguments, add_tag_arguments

    parser = argparse.ArgumentParser(
        prog="itkm search",
        description="Top-k gallery images for each query image by cosine similarity. Queries and gallery are either "
                    "folders written by `itkm embed` or images (then --model embeds them). Prints a table (or JSON "
                    "with --format json); --out DIR also writes DIR/results.json and DIR/grid.png.",
    )
    parser.add_argument("queries", nargs="+", help="an `itkm embed` folder, or query image files/folders")
    parser.add_argument("--gallery", required=True, help="an `itkm embed` folder (its faiss index is kept there), "
                                                         "or a folder of images")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--backend", choices=("auto", "faiss", "torch"), default="auto",
                        help="auto: faiss when installed, else torch (same results)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="what to print")
    parser.add_argument("--out", help="folder for results.json and grid.png")
    parser.add_argument("--grid_rows", type=int, default=8, help="queries shown in grid.png")
    parser.add_argument("--evaluate", action="store_true",
                        help="also score the ranking (mAP, CMC, mINP): queries and gallery must be `itkm embed` "
                             "folders whose index.csv has pid and camid (embedded with --config)")
    parser.add_argument("--protocol", default="market",
                        help="with --evaluate: the protocol of evaluation/protocols.py (market, sysu, llcm, regdb, "
                             "cloth_changing, same_clothes); default market")
    parser.add_argument("--rerank", action="store_true",
                        help="with --evaluate: k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) before scoring")
    add_model_arguments(parser)
    parser.set_defaults(model=None)
    for action in parser._actions:  # --model is needed only when images must be embedded
        if action.dest == "model":
            action.required = False
    add_tag_arguments(parser)
    return parser


def _features_of(inputs: list[str], args, role: str, open_model) -> tuple[np.ndarray, list[str], Path | None]:
    """(features, paths, embedding folder or None) of an `itkm embed` folder or of images embedded now."""
    missing = [p for p in inputs if not Path(p).expanduser().exists()]
    if missing:
        raise DataUnavailableError(f"{role} {', '.join(missing)} does not exist; pass an `itkm embed` folder or "
                                   "image files/folders")
    if len(inputs) == 1 and is_embedding_dir(inputs[0]):
        features, rows = load_embeddings(inputs[0])
        return features, [r["path"] for r in rows], Path(inputs[0])
    if args.model is None:
        raise ConfigError(f"the {role} is not an `itkm embed` folder ({FEATURES_FILE} + index.csv), so it must be "
                          "embedded: pass --model (run directory or checkpoint) and --scenario")
    from itkm_lightning.tools.embed import tagged_samples

    samples = tagged_samples(inputs, args.scenario, args.group)
    features = open_model().embed_samples(samples)
    return features.numpy(), [s.path for s in samples], None


def search_results(query_paths: list[str], gallery_paths: list[str], scores: np.ndarray,
                   indices: np.ndarray) -> list[dict]:
    """JSON-ready: per query its path and the ranked matches (rank from 1, gallery row, path, cosine score)."""
    return [
        {"query": q, "matches": [{"rank": r + 1, "index": int(i), "path": gallery_paths[i], "score": float(s)}
                                 for r, (i, s) in enumerate(zip(idx, sc))]}
        for q, idx, sc in zip(query_paths, indices, scores)
    ]


def print_table(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    # Paths are shown below their common folder (named in the header): full paths wrap into unreadable cells.
    query_root = _common_folder([entry["query"] for entry in results])
    match_root = _common_folder([m["path"] for entry in results for m in entry["matches"]])
    table = Table(title="search results (cosine similarity)")
    table.add_column(f"query (in {query_root})", overflow="fold")
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column(f"match (in {match_root})", overflow="fold")
    for entry in results:
        for match in entry["matches"]:
            query = os.path.relpath(entry["query"], query_root) if match["rank"] == 1 else ""
            match_name = os.path.relpath(match["path"], match_root)
            table.add_row(query, str(match["rank"]), f"{match['score']:.3f}", match_name)
        table.add_section()
    Console().print(table)


def _common_folder(paths: list[str]) -> str:
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    return os.path.commonpath(folders) if folders else "."


def _labels(folder: str, role: str, protocol: str) -> dict[str, np.ndarray]:
    if not is_embedding_dir(folder):
        raise ConfigError(f"--evaluate needs `itkm embed` folders; the {role} {folder} is not one")
    _, rows = load_embeddings(folder)
    needed = ["pid", "camid"] + (["clothes"] if protocol in ("cloth_changing", "same_clothes") else [])
    missing = [c for c in needed if not rows or c not in rows[0]]
    if missing:
        raise DataFormatError(f"--evaluate: {Path(folder) / 'index.csv'} has no {'/'.join(missing)} column; embed the "
                              f"{role} from a dataset (`itkm embed --config ... --split query|gallery`), which records them")
    labels = {"pid": np.array([int(r["pid"]) for r in rows]), "camid": np.array([int(r["camid"]) for r in rows])}
    if "clothes" in needed:
        labels["clothes"] = np.array([r["clothes"] for r in rows])
    return labels


def evaluate_folders(args, queries: np.ndarray, gallery: np.ndarray) -> dict:
    """mAP / R1 / R5 / R10 / mINP of the full query x gallery ranking (evaluation.evaluate_rank), fractions."""
    from itkm_lightning.evaluation import PROTOCOLS, cosine_distance, evaluate_rank, summarize

    if args.protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol must be one of {list(PROTOCOLS)}, got {args.protocol!r}")
    if len(args.queries) != 1:
        raise ConfigError("--evaluate takes one `itkm embed` folder of queries")
    q, g = _labels(args.queries[0], "queries", args.protocol), _labels(args.gallery, "gallery", args.protocol)
    distmat = cosine_distance(queries, gallery)
    if args.rerank:
        from itkm_lightning.evaluation import re_ranking

        distmat = re_ranking(distmat, cosine_distance(queries, queries), cosine_distance(gallery, gallery))
    clothes = {"q_clothes": q["clothes"], "g_clothes": g["clothes"]} if "clothes" in q else {}
    metrics: dict = summarize(evaluate_rank(distmat, q["pid"], g["pid"], q["camid"], g["camid"],
                                            protocol=args.protocol, **clothes))
    metrics["protocol"] = args.protocol
    if args.rerank:
        metrics["rerank"] = {"k1": 20, "k2": 6, "lambda": 0.3}
    return metrics


def metrics_line(metrics: dict) -> str:
    numbers = ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items() if isinstance(v, float))
    return f"evaluation ({metrics['protocol']} protocol{', re-ranked' if 'rerank' in metrics else ''}): {numbers}"


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    if args.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")

    @functools.cache
    def open_model():  # loaded once, and only when images must be embedded
        from itkm_lightning.extractor import FeatureExtractor

        return FeatureExtractor(args.model, device=args.device, feature=args.feature, flip=args.flip,
                                batch_size=args.batch_size, num_workers=args.num_workers)

    gallery, gallery_paths, gallery_dir = _features_of([args.gallery], args, "gallery", open_model)
    queries, query_paths, _ = _features_of(args.queries, args, "query", open_model)
    index = (GalleryIndex.for_embedding_dir(gallery_dir, gallery, args.backend) if gallery_dir is not None
             else GalleryIndex(gallery, args.backend))
    metrics = None
    if args.evaluate:  # checked before the search so that a folder without labels costs nothing
        metrics = evaluate_folders(args, queries, gallery)
    scores, indices = index.search(queries, args.topk)
    results = search_results(query_paths, gallery_paths, scores, indices)
    if args.format == "json":
        print(json.dumps(results if metrics is None else {"metrics": metrics, "results": results}, indent=2))
    else:
        print_table(results)
        if metrics is not None:
            print(metrics_line(metrics))
    if args.out:
        from itkm_lightning.tools.figures import ranked_list_grid

        out = Path(args.out)
        payload = {"backend": index.backend, "topk": args.topk, "results": results}
        if metrics is not None:
            payload["metrics"] = metrics
        atomic_write_json(out / "results.json", payload)
        rows = [(r["query"], [(m["path"], m["score"], None) for m in r["matches"]]) for r in results[:args.grid_rows]]
        ranked_list_grid(rows, out / "grid.png", title=f"top-{args.topk} of {len(gallery_paths)} gallery images")
        if args.format == "table":
            print(f"wrote {out / 'results.json'} and {out / 'grid.png'} (backend: {index.backend})")
