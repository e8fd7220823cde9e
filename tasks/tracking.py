"""Follow faces through a video: link them into tracks, and refit landmarks between detections.

The full detector is the slow part of extraction (tens of ms per frame on a CPU). FaceFollower
runs it only every ``detect_every`` frames; in between, each track's 68 landmarks are refitted by
the shape predictor alone (1-2 ms) inside a box derived from the track's previous landmarks. A
refit that looks wrong (the face jumped, grew, shrank or changed shape) triggers a full detection
at once, as do the first frame and a frame with no live track.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from tasks.align import compute_alignment
from tasks.detect import DetectedFace, FaceAnalyzer

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

# bounds on how much a face may change between consecutive analysed frames before a refit is distrusted
MAX_SCALE_CHANGE = 1.2  # ratio of landmark spreads (either way)
MAX_SHIFT = 0.35  # landmark centre motion, in units of the landmark spread
MAX_ASPECT_CHANGE = 1.2  # ratio of the landmarks' height/width (either way)
# the eyes-to-mouth patch under a refit must still look like the track's patch one frame before
# (normalised cross-correlation; the same face measures 0.7-1.0, a cut or a vanished face below 0.35)
MIN_PATCH_CORRELATION = 0.6
# re-detection of tracked faces only looks for faces down to this factor smaller than the smallest track
SHRINK_MARGIN = 1.5
PATCH_SIZE = 24


def intersection_over_union(first: Box, second: Box) -> float:
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    if width <= 0 or height <= 0:
        return 0.0
    overlap = width * height
    area = (first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
    return overlap / (area - overlap)


@dataclass
class FaceTracker:
    """Greedy IoU tracker: a face continues the best-overlapping track seen recently, else starts one.

    ``max_gap`` is counted in analysed frames, so sparse sampling still links a steady face.
    """

    min_overlap: float = 0.3
    max_gap: int = 3
    _tracks: dict[int, tuple[int, Box]] = field(default_factory=dict)  # id -> (last step, last box)
    _step: int = 0
    _next_id: int = 0

    def assign(self, boxes: Sequence[Box], continuing: Mapping[int, Box] | None = None) -> list[int]:
        """Track ids for the boxes of one analysed frame, in the order given.

        Args:
            boxes: newly detected boxes, to be matched to tracks by overlap.
            continuing: boxes whose track is already known (track id -> box), e.g. landmark refits;
                they are recorded first and their tracks are not offered to ``boxes``.

        Returns:
            One track id per box of ``boxes``.
        """
        self._step += 1
        continuing = continuing or {}
        for tid, box in continuing.items():
            self._tracks[tid] = (self._step, box)
        live = {tid: box for tid, (step, box) in self._tracks.items()
                if self._step - step <= self.max_gap and tid not in continuing}
        pairs = sorted(
            ((intersection_over_union(box, old), index, tid) for index, box in enumerate(boxes) for tid, old in live.items()),
            reverse=True,
        )
        assigned: dict[int, int] = {}
        taken: set[int] = set()
        for overlap, index, tid in pairs:
            if overlap < self.min_overlap:
                break
            if index not in assigned and tid not in taken:
                assigned[index] = tid
                taken.add(tid)
        result = []
        for index, box in enumerate(boxes):
            tid = assigned.get(index)
            if tid is None:
                tid, self._next_id = self._next_id, self._next_id + 1
            self._tracks[tid] = (self._step, box)
            result.append(tid)
        return result

    def record(self, track_id: int, box: Box) -> None:
        """Record where a known track is in the frame last passed to assign()."""
        self._tracks[track_id] = (self._step, box)


class LandmarkFitter(FaceAnalyzer, Protocol):
    """An analyzer that can also fit landmarks in a given box (no detector run)."""

    def fit_landmarks(self, image: np.ndarray, box: Box) -> DetectedFace:
        """The face with landmarks fitted inside ``box`` (frame pixels, framed like detector boxes)."""
        ...


@dataclass(frozen=True)
class TrackedFace:
    """A face of one analysed frame. detected: found by the detector (else refitted from the track)."""

    track_id: int
    face: DetectedFace
    detected: bool


def describe_spread(landmarks: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(centre (2,), spread = RMS distance from the centre, height/width of the landmarks' extent)."""
    centre = landmarks.mean(axis=0)
    spread = float(np.sqrt(((landmarks - centre) ** 2).sum(axis=1).mean()))
    extent = np.ptp(landmarks, axis=0)
    return centre, spread, float(extent[1] / max(extent[0], 1e-6))


def face_patch(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(PATCH_SIZE, PATCH_SIZE) float32 aligned grey eyes-to-mouth patch, zero mean and unit variance."""
    matrix = compute_alignment(landmarks, "half", PATCH_SIZE)
    patch = cv2.warpAffine(image, matrix, (PATCH_SIZE, PATCH_SIZE), borderMode=cv2.BORDER_REPLICATE)
    grey = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return (grey - grey.mean()) / (grey.std() + 1e-3)


@dataclass
class _Track:
    """Live state of one track: its last landmarks and where the detector puts a box relative to them."""

    landmarks: np.ndarray  # (68, 2) frame px
    patch: np.ndarray  # face_patch of the last frame
    box_offsets: np.ndarray  # (4,) detector box edges minus the landmark centre, in spreads (x0, y0, x1, y1)
    score: float  # the detector's score when the track was last detected
    unconfirmed: int = 0  # analysed frames since the detector last found this face


def _box_offsets(face: DetectedFace) -> np.ndarray:
    centre, spread, _ = describe_spread(face.landmarks)
    return (np.asarray(face.bbox, dtype=np.float64) - np.tile(centre, 2)) / max(spread, 1e-6)


def _refit_is_plausible(before: np.ndarray, after: np.ndarray) -> bool:
    """Cheap check that a refit still sits on the same face (no jump, collapse or distortion)."""
    centre_before, spread_before, aspect_before = describe_spread(before)
    centre_after, spread_after, aspect_after = describe_spread(after)
    if not np.isfinite(after).all() or spread_after <= 1e-3 or spread_before <= 1e-3:
        return False
    scale = spread_after / spread_before
    aspect = aspect_after / max(aspect_before, 1e-6)
    shift = float(np.linalg.norm(centre_after - centre_before)) / spread_before
    return (1 / MAX_SCALE_CHANGE <= scale <= MAX_SCALE_CHANGE and 1 / MAX_ASPECT_CHANGE <= aspect <= MAX_ASPECT_CHANGE
            and shift <= MAX_SHIFT)


class FaceFollower:
    """Faces of consecutive frames with track ids: full detection every ``detect_every`` frames, refits between.

    When every face wanted (max_faces) is tracked, scheduled detections look only for faces
    about as large as the tracked ones (no upsampling for large faces: several times faster).
    A track that the detector misses is kept by a plausible refit while it was detected within the
    last ``detect_every`` frames, and the detector runs again on the next frame: a momentary miss
    does not drop a steady face, and a face that is gone is dropped within a few frames.
    """

    def __init__(self, analyzer: FaceAnalyzer, detect_every: int = 1, max_faces: int = 0,
                 tracker: FaceTracker | None = None) -> None:
        """Args:
            analyzer: finds faces; one without ``fit_landmarks`` detects on every frame.
            detect_every: run the detector every this many analysed frames (1 = every frame).
            max_faces: faces per frame, largest first; 0 keeps every face.
            tracker: links detections to tracks (a fresh FaceTracker by default).

        Raises:
            ValueError: detect_every < 1.
        """
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if detect_every > 1 and not hasattr(analyzer, "fit_landmarks"):
            logger.info("analyzer %r cannot refit landmarks: detecting on every frame", analyzer.name)
            detect_every = 1
        self.analyzer, self.detect_every, self.max_faces = analyzer, detect_every, max_faces
        self.tracker = tracker or FaceTracker()
        self._tracks: dict[int, _Track] = {}
        self._patches: dict[int, np.ndarray] = {}  # face_patch of each accepted refit of the current frame
        self._since_detection = 0
        self.detections = 0  # full detector runs, for reports and benchmarks

    def follow(self, image: np.ndarray) -> list[TrackedFace]:
        """The faces of the next analysed frame (uint8 BGR), largest first."""
        refits: dict[int, DetectedFace] | None = None
        if self._tracks and self._since_detection < self.detect_every - 1:
            refits = self._refit(image)
            if len(refits) == len(self._tracks):
                self._since_detection += 1
                self.tracker.assign([], {tid: face.bbox for tid, face in refits.items()})
                for tid, face in refits.items():
                    self._remember(image, tid, face, detected=False)
                return self._ordered([TrackedFace(tid, face, False) for tid, face in refits.items()])
        return self._detect(image, refits)

    def place(self, image: np.ndarray, faces: list[DetectedFace]) -> list[TrackedFace]:
        """Faces a person placed by hand on this frame, used instead of the detector's; tracking goes on from them."""
        self._since_detection = 0
        track_ids = self.tracker.assign([face.bbox for face in faces])
        self._tracks = {}
        for track_id, face in zip(track_ids, faces, strict=True):
            self._remember(image, track_id, face, detected=True)
        return self._ordered([TrackedFace(tid, face, True) for tid, face in zip(track_ids, faces, strict=True)])

    def _refit(self, image: np.ndarray) -> dict[int, DetectedFace]:
        """Refits of every live track that pass the plausibility check (others are left out)."""
        refits = {}
        for tid, track in self._tracks.items():
            centre, spread, _ = describe_spread(track.landmarks)
            box = tuple(float(value) for value in np.tile(centre, 2) + track.box_offsets * spread)
            face = self.fitter.fit_landmarks(image, box)
            if not _refit_is_plausible(track.landmarks, face.landmarks):
                continue
            patch = face_patch(image, face.landmarks)
            if float((patch * track.patch).mean()) >= MIN_PATCH_CORRELATION:
                refits[tid] = DetectedFace(bbox=face.bbox, score=track.score, landmarks=face.landmarks)
                self._patches[tid] = patch
        return refits

    @property
    def fitter(self) -> LandmarkFitter:
        return self.analyzer  # type: ignore[return-value]  # checked in __init__

    def _detect(self, image: np.ndarray, refits: dict[int, DetectedFace] | None) -> list[TrackedFace]:
        self.detections += 1
        self._since_detection = 0
        faces = self._find_faces(image)
        if self.max_faces:
            faces = faces[: self.max_faces]
        track_ids = self.tracker.assign([face.bbox for face in faces])
        found = [TrackedFace(tid, face, True) for tid, face in zip(track_ids, faces, strict=True)]
        # tracks the detector missed: keep a plausible refit while the track was confirmed recently
        missed = {tid: self._tracks[tid] for tid in self._tracks if tid not in track_ids}
        if self.detect_every > 1 and missed:
            refits = self._refit(image) if refits is None else refits
            for tid, track in missed.items():
                room = not self.max_faces or len(found) < self.max_faces
                face = refits.get(tid)
                if face is not None and room and track.unconfirmed < self.detect_every and not any(
                        intersection_over_union(face.bbox, other.face.bbox) > 0 for other in found):
                    found.append(TrackedFace(tid, face, False))
                    self._since_detection = self.detect_every - 1  # confirm it on the very next frame
            for item in found[len(track_ids):]:
                self.tracker.record(item.track_id, item.face.bbox)
        previous = self._tracks
        self._tracks = {}
        for item in found:
            if not item.detected:
                self._tracks[item.track_id] = previous[item.track_id]
            self._remember(image, item.track_id, item.face, item.detected)
        return self._ordered(found)

    def _find_faces(self, image: np.ndarray) -> list[DetectedFace]:
        """Run the detector; coarser when every face wanted is tracked and large (no new face could be kept)."""
        coarse = self.detect_every > 1 and self.max_faces and len(self._tracks) >= self.max_faces
        if not (coarse and hasattr(self.analyzer, "detect_at_least")):
            return self.analyzer.detect(image)
        smallest = min(describe_spread(track.landmarks)[1] * float(np.ptp(track.box_offsets.reshape(2, 2), axis=0).min())
                       for track in self._tracks.values())
        return self.analyzer.detect_at_least(image, smallest / SHRINK_MARGIN)

    def _remember(self, image: np.ndarray, track_id: int, face: DetectedFace, detected: bool) -> None:
        if detected:
            self._tracks[track_id] = _Track(face.landmarks, face_patch(image, face.landmarks), _box_offsets(face),
                                            face.score)
        else:
            track = self._tracks[track_id]
            track.landmarks, track.patch, track.unconfirmed = face.landmarks, self._patches[track_id], track.unconfirmed + 1

    @staticmethod
    def _ordered(faces: list[TrackedFace]) -> list[TrackedFace]:
        def area(item: TrackedFace) -> float:
            x0, y0, x1, y1 = item.face.bbox
            return (x1 - x0) * (y1 - y0)
        return sorted(faces, key=area, reverse=True)


class TrackIdentities:
    """Identity descriptors on a budget: computed for a track's first face, then every ``every`` faces of it.

    Every face gets its track's latest descriptor, so identity is per track and no row lacks one.
    ``every`` = 1 describes every face; 0 only each track's first face.
    """

    def __init__(self, analyzer: FaceAnalyzer, every: int) -> None:
        if every < 0:
            raise ValueError(f"embed_every must be >= 0, got {every}")
        self.analyzer, self.every = analyzer, every
        self._latest: dict[int, tuple[np.ndarray, int]] = {}  # track id -> (descriptor, faces since it)
        self.computed = 0  # descriptors computed, for reports and benchmarks

    def describe(self, image: np.ndarray, faces: Sequence[TrackedFace]) -> list[np.ndarray]:
        """(128,) float32 descriptor for each face of one analysed frame, in order."""
        result = []
        for item in faces:
            latest = self._latest.get(item.track_id)
            if latest is None or (self.every and latest[1] >= self.every):
                latest = (self.analyzer.embed(image, item.face), 0)
                self.computed += 1
            self._latest[item.track_id] = (latest[0], latest[1] + 1)
            result.append(latest[0])
        return result
