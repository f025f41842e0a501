"""The one record every dataset parser yields, and the small containers built from it."""

from __future__ import annotations

from dataclasses import dataclass, field

SCENARIOS = ("vi", "cr", "cc")
"""Scenario tags: visible-infrared, cross-resolution, clothing change (docs/method.md section 1)."""

GROUP_NAMES = {
    "vi": ("visible", "infrared"),
    "cr": ("high-res", "low-res"),
    "cc": ("original", "clothing-agnostic"),
}
"""What group 0 and group 1 mean in each scenario."""


@dataclass(frozen=True)
class Sample:
    """One image and everything known about it.

    ``pid``, ``camid`` and ``clothes`` are ground truth: only evaluation and pseudo-label monitoring
    may read them. Training code sees ``index``, ``scenario``, ``group`` and ``pseudo_label`` only.
    """

    path: str
    pid: int
    camid: int
    scenario: str
    group: int
    source: str
    clothes: str | None = None
    mask_path: str | None = None
    """Optional clothes mask (white = clothes) used by the clothing-agnostic view."""
    pseudo_label: int = -1

    @property
    def identity(self) -> str:
        """The pid namespaced by its source, unique when datasets are merged."""
        return f"{self.source}:{self.pid}"


@dataclass
class BenchmarkSplit:
    """The samples of one dataset (one scenario): training set plus one query/gallery evaluation."""

    name: str
    scenario: str
    protocol: str
    train: list[Sample] = field(default_factory=list)
    query: list[Sample] = field(default_factory=list)
    gallery: list[Sample] = field(default_factory=list)
    trials: list[tuple[list[int] | None, list[int] | None]] | None = None
    """Multi-trial protocols (e.g. SYSU-MM01's 10 single-shot gallery draws): per trial, indices into
    ``query`` and ``gallery`` (``None`` = all of them). Metrics are averaged over trials; features are
    extracted once for all candidates. ``None`` means one trial over everything."""
    single_gallery_shot: int = 0
    """Draws of the literature's single-gallery-shot CMC (docs/protocols.md 5.7; ``market`` protocol only): the
    CMC averaged over that many one-image-per-identity galleries, mAP on the full gallery. 0: the
    benchmark's own protocol alone."""
