"""Random access to a side's training faces: the reader interface and its two implementations.

A reader hands out one face at a time at the model resolution S, with its mask, plus per-face
metadata that needs no decoding (yaw for pose-balanced sampling, landmarks for eyes/mouth weights).
``ArrayFaceset`` wraps arrays already in memory; ``LanceFaceset`` takes rows from the faces and masks
tables on demand, so a worker process only ever decodes the faces of its own batches.

``LanceFaceset`` opens its tables lazily, in the process that first uses it, and pickles as its paths
and face ids only: each spawned loader worker opens its own handles (Lance is not fork-safe).
When the model's face type differs from the table's, each crop is re-framed from the stored one
(see ``LanceFaceset``) instead of re-extracting. A faces table without a masks table (e.g. a
generic faceset for pretraining) gets landmark hull masks.

Each reader has a ``fingerprint``: a hash that changes when the faces it serves change, which the
trainer puts in a run's lineage.
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import cv2
import lance
import numpy as np

from tasks.align import FaceType, compute_alignment, invert_matrix, transform_points, warp_to_crop
from tasks.faceset import FacesetError, decode_png, open_faces, open_masks
from tasks.masks import hull_mask
from tasks.selection import Selection

logger = logging.getLogger(__name__)

LANDMARK_COUNT = 68
REFRAME_TOLERANCE = 1.0  # stored-crop pixels a re-framed crop may reach past the stored crop's edge
CACHE_BYTES = 512 * 2**20  # decoded faces a LanceFaceset keeps per process (a 64 px face and mask: 16 KiB)


class FacesetReader(ABC):
    """A side's faces for training, read one at a time at the model resolution.

    Implementations: ``ArrayFaceset`` (arrays in memory) and ``LanceFaceset`` (faceset tables).
    A reader that is sent to a spawned worker process must pickle cheaply (no open handles).

    Hooks: ``__len__``, ``resolution``, ``yaw``, ``landmarks``, ``read`` and ``fingerprint``;
    ``read_many`` loops over ``read`` and may be overridden with a faster batched read.
    """

    @abstractmethod
    def __len__(self) -> int:
        """The number of faces N."""

    @property
    @abstractmethod
    def resolution(self) -> int:
        """The side S of every face and mask ``read`` returns."""

    @property
    @abstractmethod
    def yaw(self) -> np.ndarray | None:
        """(N,) float32 head yaw in degrees, or None when unknown; available without decoding."""

    @property
    @abstractmethod
    def landmarks(self) -> np.ndarray | None:
        """(N, 68, 2) float32 landmarks in the pixels of the returned crops, or None when unknown."""

    @abstractmethod
    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Face ``index`` (0 <= index < N): (S, S, 3) uint8 BGR face and (S, S) uint8 mask."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A hex sha256 that changes whenever the faces, masks or metadata served would change."""

    def read_many(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Faces at ``indices`` (repeats allowed): (K, S, S, 3) uint8 faces and (K, S, S) uint8 masks."""
        pairs = [self.read(int(index)) for index in indices]
        size = self.resolution
        if not pairs:
            return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8)
        return np.stack([face for face, _ in pairs]), np.stack([mask for _, mask in pairs])


class ArrayFaceset(FacesetReader):
    """Faces and masks already decoded into memory at the model resolution.

    Args:
        faces: (N, S, S, 3) uint8 BGR.
        masks: (N, S, S) uint8.
        yaw: Optional (N,) yaw in degrees.
        landmarks: Optional (N, 68, 2) landmarks in the crops' pixels.

    Raises:
        ValueError: An array has the wrong shape or dtype.
    """

    def __init__(self, faces: np.ndarray, masks: np.ndarray, yaw: np.ndarray | None = None,
                 landmarks: np.ndarray | None = None) -> None:
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[3] != 3 or faces.shape[1] != faces.shape[2]:
            raise ValueError(f"faces must be (N, S, S, 3) uint8 BGR, got {faces.shape} {faces.dtype}")
        if masks.dtype != np.uint8 or masks.shape != faces.shape[:3]:
            raise ValueError(f"masks must be {faces.shape[:3]} uint8 to match the faces, got {masks.shape} {masks.dtype}")
        if yaw is not None and np.shape(yaw) != (len(faces),):
            raise ValueError(f"yaw must be ({len(faces)},) to match the faces, got {np.shape(yaw)}")
        if landmarks is not None and np.shape(landmarks) != (len(faces), LANDMARK_COUNT, 2):
            raise ValueError(f"landmarks must be ({len(faces)}, {LANDMARK_COUNT}, 2), got {np.shape(landmarks)}")
        self.faces, self.masks = faces, masks
        self._yaw = None if yaw is None else np.asarray(yaw, np.float32)
        self._landmarks = None if landmarks is None else np.asarray(landmarks, np.float32)

    def __len__(self) -> int:
        return len(self.faces)

    @property
    def resolution(self) -> int:
        return self.faces.shape[1]

    @property
    def yaw(self) -> np.ndarray | None:
        return self._yaw

    @property
    def landmarks(self) -> np.ndarray | None:
        return self._landmarks

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.faces[index], self.masks[index]

    def fingerprint(self) -> str:
        digest = hashlib.sha256(type(self).__name__.encode())
        for array in (self.faces, self.masks, self._yaw, self._landmarks):
            if array is not None:
                digest.update(f"{array.dtype}{array.shape}".encode())
                digest.update(np.ascontiguousarray(array).data)
            else:
                digest.update(b"none")
        return digest.hexdigest()

    def read_many(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(indices, np.int64)
        return self.faces[positions], self.masks[positions]


@dataclass
class OpenTables:
    """A LanceFaceset's handles and per-face geometry, built on first use in each process.

    Attributes:
        faces, masks: The open tables (masks None: hull masks from the landmarks).
        face_positions, mask_positions: (N,) row positions of each face in the two tables (mask
            positions None without a masks table).
        warps: (N, 2, 3) stored crop -> output crop matrices of the re-framed faces.
        reframed: (N,) bool, whether a face is re-framed (else it is resized).
        yaw: (N,) degrees.
        landmarks: (N, 68, 2) in output crop pixels.
    """

    faces: lance.LanceDataset
    masks: lance.LanceDataset | None
    face_positions: np.ndarray
    mask_positions: np.ndarray | None
    warps: np.ndarray
    reframed: np.ndarray
    yaw: np.ndarray
    landmarks: np.ndarray


class LanceFaceset(FacesetReader):
    """Faces taken from a faces table and its masks table by row position, decoded on demand.

    Each face is the stored JPEG crop and PNG mask resized to ``resolution`` (area interpolation, as
    ``tasks.training_data.load_side`` does). When ``face_type`` differs from a row's stored face type,
    the crop is re-framed instead: the wanted crop is ``compute_alignment(landmarks, face_type,
    resolution)`` composed with the inverse of the row's stored matrix, applied to the stored crop and
    mask. That only works when the wanted framing lies inside the stored one (full or half from
    whole_face or head, whole_face from head).

    Args:
        faces_path: The faces table (tasks.faceset.FACES_SCHEMA).
        masks_path: Its masks table (tasks.faceset.MASKS_SCHEMA), one mask per face id; None draws
            each face's mask as the convex hull of its landmarks (tasks.masks.hull_mask), as the
            mask stage's "hull" kind does.
        face_ids: The faces to serve, in this order; None serves every face in table order.
        resolution: Side S of the returned faces and masks.
        face_type: The framing the model trains on; None keeps each row's stored framing.
        cache_bytes: Faces decoded and framed once are kept in memory, up to this many bytes per
            process (a training run reads each face many times); 0 keeps none.

    Raises:
        ValueError: ``resolution`` < 1 or an unknown ``face_type`` (at once); on first use, a face
            without a mask, or a ``face_type`` wider than the stored crops.
        FacesetError: On first use, a table is missing or malformed, or lacks a wanted face id.
    """

    def __init__(self, faces_path: Path, masks_path: Path | None, face_ids: Sequence[str] | None, resolution: int,
                 face_type: FaceType | None = None, cache_bytes: int = CACHE_BYTES) -> None:
        if resolution < 1:
            raise ValueError(f"reader resolution must be at least 1, got {resolution}")
        if face_type is not None and face_type not in get_args(FaceType):
            raise ValueError(f"face_type must be one of {list(get_args(FaceType))} or None, got {face_type!r}")
        self.faces_path = Path(faces_path)
        self.masks_path = None if masks_path is None else Path(masks_path)
        self.face_ids = None if face_ids is None else tuple(face_ids)
        self._resolution = resolution
        self.face_type = face_type
        self.cache_bytes = cache_bytes
        self._tables: OpenTables | None = None
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # index -> (face, mask) as read_many returns them

    @classmethod
    def from_selection(cls, faces_path: Path, masks_path: Path | None, selection_path: Path | None, resolution: int,
                       face_type: FaceType | None = None) -> LanceFaceset:
        """The faces a curated selection keeps (all when ``selection_path`` is None), in table order."""
        if selection_path is None:
            return cls(faces_path, masks_path, None, resolution, face_type)
        kept = set(Selection.load(Path(selection_path)).kept)
        table_ids = open_faces(Path(faces_path)).to_table(columns=["face_id"])["face_id"].to_pylist()
        return cls(faces_path, masks_path, [face_id for face_id in table_ids if face_id in kept], resolution, face_type)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tables": None, "_cache": {}}  # handles and decoded faces stay in their process

    def __len__(self) -> int:
        return len(self.face_ids) if self.face_ids is not None else len(self.open().face_positions)

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def yaw(self) -> np.ndarray:
        return self.open().yaw

    @property
    def landmarks(self) -> np.ndarray:
        return self.open().landmarks

    def fingerprint(self) -> str:
        """Hashes the tables' file names and sizes (Lance names each data file by a fresh uuid, so new
        content means new names) with the face ids, resolution and face type; reads no face."""
        digest = hashlib.sha256(type(self).__name__.encode())
        digest.update(repr((self.face_ids, self._resolution, self.face_type, self.masks_path is None)).encode())
        for table in (self.faces_path, self.masks_path):
            if table is None:
                continue
            for folder, _, names in sorted(os.walk(table)):
                for name in sorted(names):
                    path = Path(folder) / name
                    digest.update(f"{path.relative_to(table)}:{path.stat().st_size}\n".encode())
        return digest.hexdigest()

    def open(self) -> OpenTables:
        """Open the tables and compute each face's geometry (once per process); raises as the class says."""
        if self._tables is None:
            self._tables = self.open_tables()
        return self._tables

    def open_tables(self) -> OpenTables:
        """Open both tables, find each face's rows and compute its output geometry (see ``open``)."""
        faces = open_faces(self.faces_path)
        masks = None if self.masks_path is None else open_masks(self.masks_path)
        table_ids = faces.to_table(columns=["face_id"])["face_id"].to_pylist()
        wanted = table_ids if self.face_ids is None else list(self.face_ids)
        face_positions = look_up_positions(table_ids, wanted)
        missing = np.flatnonzero(face_positions < 0)
        if len(missing):
            raise FacesetError(f"{self.faces_path} has no face {wanted[missing[0]]} ({len(missing)} wanted faces "
                               "missing); re-run the curate stage so the selection matches the faces table")
        mask_positions = None
        if masks is not None:
            mask_positions = look_up_positions(masks.to_table(columns=["face_id"])["face_id"].to_pylist(), wanted)
            missing = np.flatnonzero(mask_positions < 0)
            if len(missing):
                raise ValueError(f"{self.masks_path} has no mask for face {wanted[missing[0]]} ({len(missing)} faces "
                                 "without a mask); re-run the mask stage")
        rows = faces.take(face_positions, columns=["face_id", "landmarks", "matrix", "face_type", "crop_size", "yaw"])
        count = len(wanted)
        frame_landmarks = np.asarray(rows["landmarks"].to_pylist(), np.float32).reshape(count, LANDMARK_COUNT, 2)
        stored = np.asarray(rows["matrix"].to_pylist(), np.float32).reshape(count, 2, 3)
        crop_sizes = np.asarray(rows["crop_size"].to_pylist(), np.float32)
        stored_types = rows["face_type"].to_pylist()
        reframed = np.array([self.face_type not in (None, stored_type) for stored_type in stored_types], bool)
        warps = np.zeros((count, 2, 3), np.float32)
        # Resized rows: crop pixel p lands at (p + 0.5) * S / crop_size - 0.5 (pixel centres, as cv2.resize).
        in_crop = np.einsum("nij,nkj->nki", stored[:, :, :2], frame_landmarks) + stored[:, None, :, 2]
        scale = (self._resolution / crop_sizes)[:, None, None]
        landmarks = (in_crop + 0.5) * scale - 0.5
        face_ids = rows["face_id"].to_pylist()
        for index in np.flatnonzero(reframed):
            wanted_matrix = compute_alignment(frame_landmarks[index], self.face_type, self._resolution)
            warps[index] = compose_affine(wanted_matrix, invert_matrix(stored[index]))
            self.check_inside(warps[index], float(crop_sizes[index]), stored_types[index], face_ids[index])
            landmarks[index] = transform_points(frame_landmarks[index], wanted_matrix)
        if reframed.any():
            logger.info("re-framing %d faces of %s as %s", int(reframed.sum()), self.faces_path, self.face_type)
        yaw = np.asarray(rows["yaw"].to_pylist(), np.float32)
        return OpenTables(faces, masks, face_positions, mask_positions, warps, reframed, yaw, landmarks.astype(np.float32))

    def check_inside(self, warp: np.ndarray, crop_size: float, stored_type: str, face_id: str) -> None:
        """Raise ValueError unless the output crop of ``warp`` (stored crop -> output) lies inside the stored crop."""
        edge = self._resolution - 0.5
        corners = np.array([[-0.5, -0.5], [edge, -0.5], [-0.5, edge], [edge, edge]], np.float32)
        reached = transform_points(corners, invert_matrix(warp))  # (4, 2) in stored crop pixels
        if reached.min() < -0.5 - REFRAME_TOLERANCE or reached.max() > crop_size - 0.5 + REFRAME_TOLERANCE:
            raise ValueError(
                f"{self.faces_path} stores {stored_type} crops, which do not contain the {self.face_type} framing the "
                f"model trains on (face {face_id}); re-extract with extract.faces.face_type at least as wide as the "
                f"model's ('{self.face_type}' or wider, e.g. 'head'): faceflow re-crops the table from its stored "
                "landmarks without re-detecting faces")

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        faces, masks = self.read_many([index])
        return faces[0], masks[0]

    def read_many(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        tables = self.open()
        indices = np.asarray(indices, np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(tables.face_positions)):
            raise IndexError(f"face index out of range 0..{len(tables.face_positions) - 1}: {indices.tolist()}")
        missing = [int(index) for index in dict.fromkeys(indices.tolist()) if index not in self._cache]
        decoded = dict(zip(missing, zip(*self.decode(tables, np.asarray(missing, np.int64)), strict=True), strict=True))
        pair_bytes = 4 * self._resolution**2  # a face (3 bytes a pixel) and its mask (1)
        for index, pair in decoded.items():
            if (len(self._cache) + 1) * pair_bytes <= self.cache_bytes:
                self._cache[index] = pair
        pairs = [self._cache.get(int(index)) or decoded[int(index)] for index in indices]
        size = self._resolution
        if not pairs:
            return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8)
        return np.stack([face for face, _ in pairs]), np.stack([mask for _, mask in pairs])

    def decode(self, tables: OpenTables, indices: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Read, decode and frame the faces at ``indices`` (distinct): (S, S, 3) faces and (S, S) masks."""
        if not len(indices):
            return [], []
        rows = tables.faces.take(tables.face_positions[indices], columns=["face_id", "image"])  # one take per batch
        pngs: list[bytes | None] = [None] * len(indices)
        if tables.masks is not None:
            pngs = tables.masks.take(tables.mask_positions[indices], columns=["mask"])["mask"].to_pylist()
        faces, masks = [], []
        for index, face_id, jpeg, png in zip(indices, rows["face_id"].to_pylist(), rows["image"].to_pylist(), pngs,
                                             strict=True):
            face = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            mask = decode_png(png) if png is not None else None
            if face is None or (mask is None and png is not None):
                raise FacesetError(f"face {face_id} of {self.faces_path} or its mask in {self.masks_path} cannot be "
                                   "decoded; delete the tables and re-run the extract and mask stages")
            faces.append(self.frame_crop(face, tables, index))
            # Without a masks table: the hull of the landmarks, drawn in the output crop.
            masks.append(self.frame_crop(mask, tables, index) if png is not None
                         else hull_mask(tables.landmarks[index], self._resolution))
        return faces, masks

    def frame_crop(self, image: np.ndarray, tables: OpenTables, index: int) -> np.ndarray:
        """A stored crop or mask -> the (S, S[, 3]) output: re-framed, or resized like load_side."""
        size = self._resolution
        if tables.reframed[index]:
            return warp_to_crop(image, tables.warps[index], size)
        if image.shape[0] != size or image.shape[1] != size:
            return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        return image


def look_up_positions(table_ids: list[str], wanted: Sequence[str]) -> np.ndarray:
    """(len(wanted),) int64 row position of each wanted id in ``table_ids``; -1 where absent."""
    position_by_id = {face_id: position for position, face_id in enumerate(table_ids)}
    return np.array([position_by_id.get(face_id, -1) for face_id in wanted], np.int64)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 matrix applying ``inner`` first, then ``outer`` (float32)."""
    outer, inner = np.asarray(outer, np.float64), np.asarray(inner, np.float64)
    return np.hstack([outer[:, :2] @ inner[:, :2], outer[:, :2] @ inner[:, 2:] + outer[:, 2:]]).astype(np.float32)
