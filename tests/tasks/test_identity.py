"""Identity filtering on real photos: references pick out one person, clusters find the main one, tracks decide whole."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from tasks.analyzers import create_analyzer
from tasks.identity import (
    DEFAULT_THRESHOLD,
    IdentityError,
    dominant_identity,
    filter_identity,
    match_references,
    reference_embeddings,
    score_matching,
)
from tasks.images import list_media, read_image

# four targets (jennifer_aniston is the hardest of the benchmark's) among look-alike-free impostors
TARGETS = ["barack_obama", "jack_dorsey", "katy_perry", "jennifer_aniston"]
IMPOSTORS = ["joe_biden", "elon_musk", "rose_leslie", "marissa_mayer"]
DISTRACTORS = ["000007.jpg", "000013.jpg", "000015.jpg", "000016.jpg", "000020.jpg", "000030.jpg"]


@pytest.fixture(scope="module")
def analyzer():
    return create_analyzer("dlib")


@pytest.fixture(scope="module")
def described(media_dir, analyzer):
    """(descriptors (N, 128), person per row) for the subset's photos, largest face of each."""
    photos = [(person, photo) for person in TARGETS + IMPOSTORS
              for photo in list_media(media_dir / "photos" / "identities" / person)[1]]
    photos += [(f"distractor {name}", media_dir / "photos" / "distractors" / name) for name in DISTRACTORS]
    descriptors, people = [], []
    for person, photo in photos:
        image = read_image(photo)
        faces = analyzer.detect(image)
        assert faces, f"{photo} should show a face"
        descriptors.append(analyzer.embed(image, faces[0]))
        people.append(person)
    return np.stack(descriptors).astype(np.float32), np.array(people)


def test_default_threshold_keeps_the_target_given_one_or_two_reference_photos(described):
    descriptors, people = described
    one, two = (score_matching(descriptors, people, DEFAULT_THRESHOLD, count) for count in (1, 2))
    true_positives = one.true_positives + two.true_positives
    precision = true_positives / (true_positives + one.false_positives + two.false_positives)
    recall = true_positives / (true_positives + one.false_negatives + two.false_negatives)
    assert one.true_positives + two.true_positives > 150, "every target's trials ran"
    assert precision >= 0.95 and recall >= 0.95, (one, two)
    # the threshold matters: far too strict loses the target, far too loose lets everyone in
    assert score_matching(descriptors, people, 0.35, 1).recall < 0.8
    assert score_matching(descriptors, people, 0.75, 1).precision < 0.8


def test_reference_folder_skips_faceless_photos_and_matches_the_person(tmp_path, media_dir, analyzer, described, caplog):
    folder = tmp_path / "reference"
    folder.mkdir()
    shutil.copy(media_dir / "photos" / "identities" / "barack_obama" / "obama.jpg", folder / "obama.jpg")
    shutil.copy(media_dir / "photos" / "misc" / "dogs.jpg", folder / "dogs.jpg")
    with caplog.at_level(logging.WARNING, logger="tasks.identity"):
        references, used = reference_embeddings(folder, analyzer)
    assert references.shape == (1, 128) and [path.name for path in used] == ["obama.jpg"]
    assert "dogs.jpg" in caplog.text
    descriptors, people = described
    keep, distance = match_references(descriptors, references)
    assert set(people[keep]) == {"barack_obama"} and keep.sum() == (people == "barack_obama").sum()
    assert np.all(distance[~keep] > DEFAULT_THRESHOLD)


def test_reference_folder_without_any_face_names_the_files(tmp_path, media_dir, analyzer):
    folder = tmp_path / "reference"
    folder.mkdir()
    for name in ("dogs.jpg", "view.jpg"):
        shutil.copy(media_dir / "photos" / "misc" / name, folder / name)
    with pytest.raises(IdentityError, match="dogs.jpg.*view.jpg"):
        reference_embeddings(folder, analyzer)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(reference_embeddings(empty, analyzer)[0]) == 0
    assert reference_embeddings(tmp_path / "missing", analyzer)[1] == []


def test_rows_without_a_descriptor_are_never_matched(described):
    descriptors, _ = described
    with_missing = descriptors.copy()
    with_missing[0] = np.nan
    keep, distance = match_references(with_missing, descriptors[:1])
    assert not keep[0] and np.isnan(distance[0])
    with pytest.raises(ValueError, match="at least one reference"):
        match_references(descriptors, np.empty((0, 128), np.float32))


def test_without_references_the_largest_identity_is_kept(described):
    descriptors, people = described
    # katy_perry's 6 photos outnumber every other person's
    keep, labels = dominant_identity(descriptors)
    assert set(people[keep]) == {"katy_perry"} and keep.sum() == (people == "katy_perry").sum()
    assert labels.min() == 0 and np.all(labels[keep] == 0)
    for person in TARGETS + IMPOSTORS:
        assert len(set(labels[people == person])) == 1, f"{person}'s photos form one cluster"
    assert len(set(labels[people == "barack_obama"]) & set(labels[people == "joe_biden"])) == 0
    result = filter_identity(descriptors, None, DEFAULT_THRESHOLD)
    assert np.array_equal(result.keep, keep)
    assert all("largest identity cluster" in result.reasons[index] for index in np.flatnonzero(~keep))


def test_tracks_are_kept_or_dropped_whole(described):
    descriptors, people = described
    obama, katy, biden = (np.flatnonzero(people == person) for person in ("barack_obama", "katy_perry", "joe_biden"))
    # source a: track 0 is Obama with one face the detector swapped for Katy Perry, and one face without
    # a descriptor; track 1 is Biden. Source b reuses track id 0 for Katy Perry.
    rows = np.concatenate([obama[1:], katy[:1], obama[:1], biden, katy])
    embeddings = descriptors[rows].copy()
    embeddings[len(obama)] = np.nan  # obama[0]: no descriptor
    tracks = np.array([0] * (len(obama) + 1) + [1] * len(biden) + [0] * len(katy))
    sources = np.array(["a"] * (len(obama) + 1 + len(biden)) + ["b"] * len(katy))
    references = descriptors[obama[:1]]

    per_face = filter_identity(embeddings, references, DEFAULT_THRESHOLD)
    assert per_face.keep.sum() == len(obama) - 1, "alone, the swapped and the undescribed faces are dropped"
    swapped = len(obama) - 1
    assert per_face.reasons[swapped].startswith("other person: distance") and f"> {DEFAULT_THRESHOLD:.2f}" in per_face.reasons[swapped]
    assert "no identity descriptor" in per_face.reasons[swapped + 1]

    by_track = filter_identity(embeddings, references, DEFAULT_THRESHOLD, track_ids=tracks, source_ids=sources)
    assert np.array_equal(by_track.keep, (sources == "a") & (tracks == 0))
    assert all(by_track.reasons[index].startswith("other person: track") for index in np.flatnonzero(~by_track.keep))
    assert set(by_track.reasons) == set(np.flatnonzero(~by_track.keep).tolist())
    # without sources, track 0 of both sources is one track: Katy Perry's 6 faces outvote Obama's 3
    merged = filter_identity(embeddings, references, DEFAULT_THRESHOLD, track_ids=tracks)
    assert not merged.keep[tracks == 0].any()
