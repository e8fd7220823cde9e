"""Curation thresholds on a real faceset, and the selection file round trip."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tasks.curate import CurateOptions, curate_faces
from tasks.extract import FaceOptions, SideOptions, extract_folder
from tasks.faceset import open_faces
from tasks.selection import Selection


@pytest.fixture(scope="module")
def faces_table(tmp_path_factory, media_dir):
    root = tmp_path_factory.mktemp("curate")
    raw = root / "raw"
    raw.mkdir()
    for name in ("identities/barack_obama/obama.jpg", "identities/barack_obama/obama_small.jpg", "misc/blur.jpg",
                 "identities/barack_obama/obama2.jpg", "identities/katy_perry/img27.jpg"):
        shutil.copy(media_dir / "photos" / name, raw / name.replace("/", "_"))
    faces, side = FaceOptions(size=96), SideOptions(embeddings=True, max_faces=0)
    table = root / "faces.lance"
    extract_folder(raw, table, faces, side, root)
    return table


NO_FILTERS = {"min_face_size": 0, "blur_threshold": 0, "identity": "off", "dedup_threshold": 0}


def test_thresholds_leave_out_small_and_blurry_faces_with_reasons(faces_table, tmp_path):
    everything = curate_faces(faces_table, CurateOptions(**NO_FILTERS))
    assert everything.rejected == {} and len(everything.kept) >= 3
    rows = open_faces(faces_table).to_table(columns=["face_id", "bbox", "blur"]).to_pylist()
    sizes = {row["face_id"]: min(row["bbox"][2] - row["bbox"][0], row["bbox"][3] - row["bbox"][1]) for row in rows}
    cut = (min(sizes.values()) + max(sizes.values())) / 2
    strict = curate_faces(faces_table, CurateOptions(**{**NO_FILTERS, "min_face_size": int(cut)}))
    assert set(strict.rejected) == {face_id for face_id, size in sizes.items() if size < int(cut)} != set()
    assert all(reason.startswith("small") for reason in strict.rejected.values())
    sharpest = max(row["blur"] for row in rows)
    assert curate_faces(faces_table, CurateOptions(**{**NO_FILTERS, "blur_threshold": sharpest})).kept == [
        row["face_id"] for row in rows if row["blur"] >= sharpest
    ]
    blur = curate_faces(faces_table, CurateOptions(**{**NO_FILTERS, "blur_threshold": 1e9}))
    assert not blur.kept and all(reason.startswith("blurry") for reason in blur.rejected.values())
    strict.save(tmp_path / "selection.json")
    assert Selection.load(tmp_path / "selection.json") == strict


def test_hand_rejects_win_over_thresholds(faces_table):
    first = open_faces(faces_table).to_table(columns=["face_id"]).to_pylist()[0]["face_id"]
    selection = curate_faces(faces_table, CurateOptions(**NO_FILTERS), {first: "eyes closed"})
    assert first not in selection.kept and selection.rejected == {first: "by hand: eyes closed"}


def rows_by_path(faces_table):
    rows = open_faces(faces_table).to_table(columns=["face_id", "source_path", "embedding"]).to_pylist()
    return {row["source_path"].rsplit("/", 1)[-1]: row for row in rows}


def test_identity_keeps_only_the_reference_person(faces_table):
    rows = rows_by_path(faces_table)
    reference = np.asarray([rows["identities_barack_obama_obama2.jpg"]["embedding"]], np.float32)
    selection = curate_faces(faces_table, CurateOptions(**{**NO_FILTERS, "identity": "reference"}), references=reference)
    obama = {row["face_id"] for name, row in rows.items() if "obama" in name}
    assert obama <= set(selection.kept)
    perry = rows["identities_katy_perry_img27.jpg"]["face_id"]
    assert selection.rejected[perry].startswith("other person")


def test_the_same_photo_twice_is_a_duplicate_and_the_sharper_copy_stays(faces_table):
    rows = rows_by_path(faces_table)
    selection = curate_faces(faces_table, CurateOptions(**{**NO_FILTERS, "dedup_threshold": 0.25}))
    small, large = rows["identities_barack_obama_obama_small.jpg"]["face_id"], rows["identities_barack_obama_obama.jpg"]["face_id"]
    assert {small, large} & set(selection.rejected), "one copy is dropped"
    dropped = small if small in selection.rejected else large
    assert selection.rejected[dropped].startswith("duplicate: of ")


def test_best_n_keeps_the_budget(faces_table):
    selection = curate_faces(faces_table, CurateOptions(**{**NO_FILTERS, "max_faces": 2}))
    assert len(selection.kept) == 2 and sum(r.startswith("over budget") for r in selection.rejected.values()) >= 3


def test_unknown_selection_format_is_refused(tmp_path):
    (tmp_path / "selection.json").write_text('{"version": 99}')
    with pytest.raises(ValueError, match="re-run the curate stage"):
        Selection.load(tmp_path / "selection.json")


def test_curation_reads_the_descriptor_space_of_the_analyzer_that_made_the_table(tmp_path, faces_table):
    """A table of 512-D ArcFace-style unit vectors: the insightface thresholds apply, not dlib's."""
    import lance

    from tasks.faceset import SETTINGS_KEY, read_json_metadata, write_json_metadata

    table = tmp_path / "faces.lance"
    shutil.copytree(faces_table, table)
    rows = open_faces(table).to_table().to_pylist()
    rng = np.random.default_rng(0)
    target, other = (vector / np.linalg.norm(vector) for vector in rng.normal(size=(2, 512)))
    for index, row in enumerate(rows):  # every face but the last is the target, seen with some noise
        base = other if index == len(rows) - 1 else target
        noisy = base + rng.normal(scale=0.02, size=512)
        row["embedding"] = (noisy / np.linalg.norm(noisy)).astype(np.float32).tolist()
    settings = read_json_metadata(open_faces(table), SETTINGS_KEY)
    lance.write_dataset(open_faces(table).to_table().from_pylist(rows, schema=open_faces(table).schema), str(table),
                        mode="overwrite")
    write_json_metadata(table, SETTINGS_KEY, {**settings, "faces": {**settings["faces"], "analyzer": "insightface"}})

    selection = curate_faces(table, CurateOptions(**{**NO_FILTERS, "identity": "dominant"}))
    assert selection.kept == sorted(row["face_id"] for row in rows[:-1])
    assert list(selection.rejected) == [rows[-1]["face_id"]]
    # with dlib's threshold forced, the noisy copies of one person would be split apart
    strict = curate_faces(table, CurateOptions(**{**NO_FILTERS, "identity": "dominant", "identity_threshold": 0.05}))
    assert len(strict.kept) < len(rows) - 1
