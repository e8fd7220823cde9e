"""Precision and recall of reference-photo identity matching, and the cost of a descriptor.

    python benchmarks/identity_filter.py [--media ../shared/media] [--low 0.45] [--high 0.70]

Describes the largest face of every photo in photos/identities/<person>/ and photos/distractors/.
Each person with >= 3 photos is the target in turn, given 1 or 2 of their photos as references;
the candidates are all other photos (their own others, every other person's, the distractors).
Prints precision and recall per threshold (1 reference, 2 references, both pooled), the range
of thresholds where both reach 0.95, the scores at tasks.identity.DEFAULT_THRESHOLD per person,
and the time per descriptor next to the time per detection (the baseline) measured in this run.
Then times dominant_identity (clustering without references) on the descriptors repeated with a
little noise into a video-sized set, beside dlib's Chinese whispers on every row (the baseline).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import dlib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.analyzers import create_analyzer
from tasks.identity import (
    DEFAULT_THRESHOLD,
    MatchingScore,
    dominant_identity,
    score_matching,
)
from tasks.images import list_media, read_image

TARGET = 0.95


def describe_photos(media: Path) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(descriptors (N, 128), person per row, seconds per detection, seconds per descriptor)."""
    analyzer = create_analyzer("dlib", detector="hog", upsample=1)
    folders = sorted(path for path in (media / "photos" / "identities").iterdir() if path.is_dir())
    labelled = [(folder.name, photo) for folder in folders for photo in list_media(folder)[1]]
    labelled += [(f"distractor {photo.stem}", photo) for photo in list_media(media / "photos" / "distractors")[1]]
    descriptors, people = [], []
    detect_seconds = embed_seconds = 0.0
    for person, photo in labelled:
        image = read_image(photo)
        start = time.perf_counter()
        faces = analyzer.detect(image)
        detect_seconds += time.perf_counter() - start
        if not faces:
            print(f"  no face found in {photo.relative_to(media)}; left out")
            continue
        start = time.perf_counter()
        descriptors.append(analyzer.embed(image, faces[0]))
        embed_seconds += time.perf_counter() - start
        people.append(person)
    return np.stack(descriptors), np.array(people), detect_seconds / len(labelled), embed_seconds / len(people)


def pooled(first: MatchingScore, second: MatchingScore) -> MatchingScore:
    return MatchingScore(first.true_positives + second.true_positives, first.false_positives + second.false_positives,
                         first.false_negatives + second.false_negatives)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=Path, default=ROOT.parent / "shared" / "media")
    parser.add_argument("--low", type=float, default=0.45)
    parser.add_argument("--high", type=float, default=0.70)
    parser.add_argument("--step", type=float, default=0.01)
    parser.add_argument("--copies", type=int, default=25, help="noisy copies per photo for the clustering timing")
    arguments = parser.parse_args()

    descriptors, people, detect_time, embed_time = describe_photos(arguments.media)
    names, counts = np.unique(people, return_counts=True)
    targets = [name for name, count in zip(names, counts) if count >= 3]
    print(f"{len(people)} photos described, {len(names)} people; targets (>= 3 photos): {len(targets)}: "
          f"{', '.join(targets)}")
    print(f"time per descriptor {embed_time * 1000:.0f} ms; per detection (baseline) {detect_time * 1000:.0f} ms; "
          f"ratio {embed_time / detect_time:.2f}")

    print("\nthreshold | 1 reference: P  R  (FP, FN) | 2 references: P  R  (FP, FN) | pooled: P  R")
    meeting = []
    for threshold in np.arange(arguments.low, arguments.high + 1e-9, arguments.step):
        one, two = (score_matching(descriptors, people, threshold, count) for count in (1, 2))
        both = pooled(one, two)
        ok = min(one.precision, one.recall, two.precision, two.recall) >= TARGET
        meeting += [threshold] if ok else []
        print(f"  {threshold:.2f}    | {one.precision:.3f} {one.recall:.3f} ({one.false_positives:3d}, "
              f"{one.false_negatives:3d}) | {two.precision:.3f} {two.recall:.3f} ({two.false_positives:3d}, "
              f"{two.false_negatives:3d}) | {both.precision:.3f} {both.recall:.3f}{'  *' if ok else ''}")
    if meeting:
        print(f"* precision and recall >= {TARGET} with 1 and with 2 references: {min(meeting):.2f} .. {max(meeting):.2f}")
    else:
        print(f"no threshold reaches precision and recall >= {TARGET}")

    print(f"\nat DEFAULT_THRESHOLD = {DEFAULT_THRESHOLD}, per target (1 and 2 references pooled):")
    for target in targets:
        score = pooled(*(score_matching(descriptors, people, DEFAULT_THRESHOLD, count, targets=[target])
                         for count in (1, 2)))
        print(f"  {target:20s} precision {score.precision:.3f} recall {score.recall:.3f} "
              f"(FP {score.false_positives}, FN {score.false_negatives})")
    overall = pooled(*(score_matching(descriptors, people, DEFAULT_THRESHOLD, count) for count in (1, 2)))
    print(f"  overall              precision {overall.precision:.3f} recall {overall.recall:.3f}")

    benchmark_clustering(descriptors, people, arguments.copies)


def benchmark_clustering(descriptors: np.ndarray, people: np.ndarray, copies: int) -> None:
    """Time dominant_identity against Chinese whispers on every row, on noisy copies of the photos."""
    generator = np.random.default_rng(0)
    repeated = np.repeat(descriptors, copies, axis=0)
    many = (repeated + generator.normal(0.0, 0.01, repeated.shape)).astype(np.float32)
    labels_of_rows = np.repeat(people, copies)
    start = time.perf_counter()
    keep, _ = dominant_identity(many)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    vectors = [dlib.vector(row.astype(np.float64).tolist()) for row in many]
    baseline_labels = np.asarray(dlib.chinese_whispers_clustering(vectors, DEFAULT_THRESHOLD))
    baseline = time.perf_counter() - start
    largest = np.bincount(baseline_labels).argmax()
    agree = np.array_equal(keep, baseline_labels == largest)
    print(f"\nclustering {len(many)} descriptors without references: dominant_identity {ours:.2f} s, Chinese whispers "
          f"on every row (baseline) {baseline:.2f} s, speed-up {baseline / ours:.0f}x; kept {int(keep.sum())} "
          f"({', '.join(sorted(set(labels_of_rows[keep])))}); same faces kept as the baseline: {agree}")


if __name__ == "__main__":
    main()
