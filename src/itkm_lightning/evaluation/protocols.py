"""What each evaluation protocol removes from a query's ranked list (docs/protocols.md section 5), and the
identity, camera and clothes labels it needs, encoded once per query x gallery matrix."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from itkm_lightning.evaluation.distances import _clothes_vector, _joint_codes, _label_vector

Protocol = Literal["market", "sysu", "llcm", "regdb", "cloth_changing", "same_clothes"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)

_DISTINCT_IDENTITY_CMC = frozenset({"sysu", "llcm"})
"""Protocols whose CMC counts each gallery identity once (docs/protocols.md 5.3 and 5.5)."""
_CLOTHES_PROTOCOLS = frozenset({"cloth_changing", "same_clothes"})
_SAME_CAMERA_REMOVAL = frozenset({"market", "llcm", "cloth_changing", "same_clothes"})

SYSU_IR_QUERY_CAMERA = 3
SYSU_SHADOWED_GALLERY_CAMERA = 2
"""SYSU-MM01 cameras 2 and 3 share a location: camera-3 queries never see camera-2 gallery images."""


@dataclass(frozen=True)
class _Labels:
    """Identity, camera and clothes labels, as integer codes shared by query and gallery."""

    q_pid: np.ndarray
    g_pid: np.ndarray
    q_cam: np.ndarray
    g_cam: np.ndarray
    q_cam_raw: np.ndarray
    g_cam_raw: np.ndarray
    q_clothes: np.ndarray | None
    g_clothes: np.ndarray | None

    @classmethod
    def build(
        cls,
        shape: tuple[int, int],
        q_pids: Any,
        g_pids: Any,
        q_camids: Any,
        g_camids: Any,
        q_clothes: Any,
        g_clothes: Any,
        protocol: str,
    ) -> _Labels:
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}.")
        num_query, num_gallery = shape
        q_pid, g_pid = _joint_codes(
            _label_vector(q_pids, "q_pids", num_query, "queries"),
            _label_vector(g_pids, "g_pids", num_gallery, "gallery items"),
        )
        q_cam_raw = _label_vector(q_camids, "q_camids", num_query, "queries")
        g_cam_raw = _label_vector(g_camids, "g_camids", num_gallery, "gallery items")
        q_cam, g_cam = _joint_codes(q_cam_raw, g_cam_raw)
        q_cloth = g_cloth = None
        if protocol in _CLOTHES_PROTOCOLS:
            if q_clothes is None or g_clothes is None:
                raise ValueError(
                    f"protocol {protocol!r} needs q_clothes and g_clothes; pass the clothes key of "
                    "every query and gallery sample."
                )
            q_cloth, g_cloth = _joint_codes(
                _clothes_vector(q_clothes, "q_clothes", num_query, "queries"),
                _clothes_vector(g_clothes, "g_clothes", num_gallery, "gallery items"),
            )
        return cls(q_pid, g_pid, q_cam, g_cam, q_cam_raw, g_cam_raw, q_cloth, g_cloth)


def _query_groups(protocol: str, labels: _Labels) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (query rows, gallery columns) pairs; each query is scored against its columns only.

    Only SYSU needs two groups: its camera-3 queries lose every camera-2 gallery column.
    """
    all_queries = np.arange(labels.q_pid.size)
    all_gallery = np.arange(labels.g_pid.size)
    if protocol != "sysu":
        yield all_queries, all_gallery
        return
    shadowed_queries = labels.q_cam_raw == SYSU_IR_QUERY_CAMERA
    visible_gallery = np.flatnonzero(labels.g_cam_raw != SYSU_SHADOWED_GALLERY_CAMERA)
    for rows, cols in ((~shadowed_queries, all_gallery), (shadowed_queries, visible_gallery)):
        if rows.any() and cols.size:
            yield np.flatnonzero(rows), cols


def _removed_pairs(
    protocol: str, labels: _Labels, query_index: np.ndarray, gallery_index: np.ndarray
) -> np.ndarray:
    """Which same-identity (query, gallery) pairs the protocol drops from the ranked list."""
    removed = np.zeros(query_index.size, dtype=bool)
    if protocol in _SAME_CAMERA_REMOVAL:
        removed |= labels.q_cam[query_index] == labels.g_cam[gallery_index]
    if protocol in _CLOTHES_PROTOCOLS:
        assert labels.q_clothes is not None and labels.g_clothes is not None
        same_clothes = labels.q_clothes[query_index] == labels.g_clothes[gallery_index]
        removed |= same_clothes if protocol == "cloth_changing" else ~same_clothes
    return removed
