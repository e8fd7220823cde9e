"""The face analyzer backends by name, and how each one's identity descriptors are compared.

Every backend implements tasks.detect.FaceAnalyzer. Descriptors of different backends live in
different spaces (dlib: 128-D, ArcFace: 512-D unit vectors), so the distances that mean "same
person" or "the same moment twice" belong to the backend; curation reads them from here, keyed by
the analyzer recorded in the faces table's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from tasks.detect import DlibAnalyzer, FaceAnalyzer
from tasks.insightface_analyzer import EMBEDDING_SIZE as ARCFACE_SIZE
from tasks.insightface_analyzer import InsightFaceAnalyzer

AnalyzerName = Literal["dlib", "insightface"]

ANALYZERS: dict[str, type] = {"dlib": DlibAnalyzer, "insightface": InsightFaceAnalyzer}
assert set(ANALYZERS) == set(get_args(AnalyzerName)), "ANALYZERS must cover every AnalyzerName"


@dataclass(frozen=True)
class IdentitySpace:
    """How one backend's descriptors are compared (Euclidean distance).

    Attributes:
        embedding_size: Length of a descriptor.
        same_person: Largest distance between two faces of one person (curate.identity_threshold's default).
        duplicate: Largest distance for two faces to count as near-duplicates (with near-identical pixels).
    """

    embedding_size: int
    same_person: float
    duplicate: float


IDENTITY_SPACES: dict[str, IdentitySpace] = {
    # measured with benchmarks/identity_filter.py on the identities photos: precision 1.00, recall 0.99 at 0.56
    "dlib": IdentitySpace(embedding_size=128, same_person=0.56, duplicate=0.35),
    # ArcFace unit vectors: distance = sqrt(2 - 2 cos); insightface's same-person bound, cosine 0.4, is 1.10;
    # near-duplicates (cosine 0.7 and above) 0.77
    "insightface": IdentitySpace(embedding_size=ARCFACE_SIZE, same_person=1.10, duplicate=0.77),
}
assert set(IDENTITY_SPACES) == set(ANALYZERS), "IDENTITY_SPACES must cover every analyzer"


def create_analyzer(name: str, **options) -> FaceAnalyzer:
    """Build a registered analyzer.

    Args:
        name: a key of ANALYZERS.
        **options: passed to the analyzer's constructor.

    Returns:
        The analyzer, models loaded.

    Raises:
        ValueError: unknown name (the message lists the choices) or bad options.
        tasks.insightface_analyzer.InsightFaceMissingError, ModelPackError: the insightface backend
            lacks its package or model pack (the message says what to install or where to put it).
    """
    if name not in ANALYZERS:
        raise ValueError(f"unknown face analyzer {name!r}; choose one of {sorted(ANALYZERS)}")
    return ANALYZERS[name](**options)


def identity_space(name: str) -> IdentitySpace:
    """The descriptor space of a registered analyzer (ValueError naming the choices otherwise)."""
    if name not in IDENTITY_SPACES:
        raise ValueError(f"unknown face analyzer {name!r}; choose one of {sorted(IDENTITY_SPACES)}")
    return IDENTITY_SPACES[name]
