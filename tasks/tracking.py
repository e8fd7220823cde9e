"""Link faces of consecutive frames into tracks by box overlap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Box = tuple[float, float, float, float]


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

    def assign(self, boxes: Sequence[Box]) -> list[int]:
        """Track ids for the boxes of one analysed frame, in the order given."""
        self._step += 1
        live = {tid: box for tid, (step, box) in self._tracks.items() if self._step - step <= self.max_gap}
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
