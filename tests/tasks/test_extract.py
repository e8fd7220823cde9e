"""Extraction on real media: faces found and aligned, bad files reported by name, nothing lost or doubled."""

from __future__ import annotations

import dataclasses
import itertools
import shutil

import av
import cv2
import numpy as np
import pytest

from tasks.align import compute_alignment
from tasks.extract import (
    FaceOptions,
    SideOptions,
    create_face_analyzer,
    extract_folder,
    extract_source,
    plan_extraction,
    settings_fingerprint,
)
from tasks.faceset import SOURCES_KEY, finalize_table, open_faces, read_json_metadata
from tasks.smoothing import jitter
from tasks.video import VideoWriter, iter_frames, probe_video

FACES = FaceOptions(face_type="whole_face", size=128, jpeg_quality=90)
SIDE = SideOptions(fps=5, embeddings=True, smooth_landmarks=1.0)  # tracked, smoothed: the defaults plus smoothing


@pytest.fixture(scope="module")
def analyzer():
    return create_face_analyzer(FACES, SIDE)


def run_extraction(raw, table, root, analyzer, side=SIDE):
    plan = plan_extraction(raw, table, settings_fingerprint(FACES, side), root)
    reports = [extract_source(path, source_id, table, analyzer, FACES, side, root) for path, source_id in plan.pending.items()]
    finalize_table(table)
    return plan, reports


def test_extracts_aligned_faces_from_a_video_and_photos(tmp_path, media_dir, analyzer):
    raw = tmp_path / "data" / "raw" / "src"
    raw.mkdir(parents=True)
    shutil.copy(media_dir / "demo" / "src_pexels_8136210.mp4", raw / "clip one.mp4")
    shutil.copy(media_dir / "photos" / "identities" / "barack_obama" / "obama.jpg", raw / "obama é.jpg")
    table = tmp_path / "data" / "src" / "faces.lance"
    plan, reports = run_extraction(raw, table, tmp_path, analyzer)
    assert len(plan.pending) == 2 and all(report.status == "complete" for report in reports)
    rows = open_faces(table).to_table().to_pylist()
    video_rows = [row for row in rows if row["source_path"].endswith("clip one.mp4")]
    assert 45 <= len(video_rows) <= 52, "10 s at 5 frames/s, a face in (nearly) every sample"
    assert {row["frame_index"] % 10 for row in video_rows} == {0}, "50 fps sampled at 5 fps keeps every 10th frame"
    assert len({row["face_id"] for row in rows}) == len(rows)
    assert len({row["track_id"] for row in video_rows}) <= 2, "one steady face stays on one track"
    for track_id in {row["track_id"] for row in video_rows}:
        track = [row for row in video_rows if row["track_id"] == track_id]
        descriptors = {tuple(row["embedding"]) for row in track}
        assert len(descriptors) == -(-len(track) // SIDE.embed_every), "a descriptor per embed_every faces of a track"
    for row in rows:
        crop = cv2.imdecode(np.frombuffer(row["image"], np.uint8), cv2.IMREAD_COLOR)
        assert crop.shape == (128, 128, 3)
        assert row["embedding"] is not None and len(row["embedding"]) == 128
        landmarks = np.asarray(row["landmarks"]).reshape(68, 2)
        x0, y0, x1, y1 = row["bbox"]
        assert (landmarks[:, 0].mean() > x0) and (landmarks[:, 0].mean() < x1) and (landmarks[:, 1].mean() > y0)
    photo = [row for row in rows if row["source_path"].endswith(".jpg")]
    assert len(photo) == 1 and photo[0]["frame_index"] == 0


def test_no_faces_gives_an_empty_table(tmp_path, media_dir, analyzer):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(media_dir / "videos" / "no_faces.mp4", raw / "no_faces.mp4")
    table = tmp_path / "faces.lance"
    _, reports = run_extraction(raw, table, tmp_path, analyzer, SideOptions(fps=4))
    assert reports[0].status == "complete" and reports[0].faces == 0 and reports[0].frames > 0
    assert open_faces(table).count_rows() == 0


def write_truncated_copy(source, target):
    """Remux with the index first (as streaming encoders write), then cut the file in half."""
    with av.open(str(source)) as reader, av.open(str(target), "w", options={"movflags": "faststart"}) as writer:
        stream = writer.add_stream_from_template(reader.streams.video[0])
        for packet in reader.demux(reader.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                writer.mux(packet)
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])


def test_broken_file_is_named_and_other_sources_are_kept(tmp_path, media_dir, analyzer):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(media_dir / "photos" / "identities" / "barack_obama" / "obama2.jpg", raw / "good.jpg")
    write_truncated_copy(media_dir / "videos" / "talking_head_a.mp4", raw / "truncated.mp4")
    data = (media_dir / "demo" / "src_pexels_8136210.mp4").read_bytes()
    (raw / "index lost.mp4").write_bytes(data[: len(data) // 2])  # index at the end: nothing decodable
    (raw / "notes.mp4").write_text("this is not a video")
    table = tmp_path / "faces.lance"
    _, reports = run_extraction(raw, table, tmp_path, analyzer)
    by_name = {report.path.rsplit("/", 1)[-1]: report for report in reports}
    assert by_name["good.jpg"].status == "complete" and by_name["good.jpg"].faces == 1
    for name in ("notes.mp4", "index lost.mp4"):
        assert by_name[name].status == "failed" and name in by_name[name].error and by_name[name].faces == 0
    truncated = by_name["truncated.mp4"]
    assert truncated.status == "failed" and "truncated.mp4" in truncated.error
    rows = open_faces(table).to_table(columns=["source_path"]).to_pylist()
    assert sum(row["source_path"].endswith("good.jpg") for row in rows) == 1
    kept_from_truncated = sum(row["source_path"].endswith("truncated.mp4") for row in rows)
    assert kept_from_truncated == truncated.faces > 0, "faces read before the error are kept"
    sources = read_json_metadata(open_faces(table), SOURCES_KEY)
    assert {record["status"] for record in sources.values()} == {"complete", "failed"}


def test_rerun_skips_done_sources_and_never_duplicates(tmp_path, media_dir, analyzer):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(media_dir / "photos" / "identities" / "barack_obama" / "obama.jpg", raw / "a.jpg")
    table = tmp_path / "faces.lance"
    run_extraction(raw, table, tmp_path, analyzer)
    first = sorted(row["face_id"] for row in open_faces(table).to_table(columns=["face_id"]).to_pylist())

    # an interrupted second source: rows written but never recorded as complete
    shutil.copy(media_dir / "photos" / "identities" / "joe_biden" / "biden.jpg", raw / "b.jpg")
    plan = plan_extraction(raw, table, settings_fingerprint(FACES, SIDE), tmp_path)
    (path, source_id), = plan.pending.items()
    from tasks.faceset import FACES_SCHEMA, append_rows

    partial = open_faces(table).to_table().to_pylist()[0] | {"face_id": f"{source_id}-000000-00", "source_id": source_id}
    append_rows(table, [partial], FACES_SCHEMA)

    plan, reports = run_extraction(raw, table, tmp_path, analyzer)
    assert [report.path.rsplit("/", 1)[-1] for report in reports] == ["b.jpg"], "a.jpg is done and skipped"
    ids = [row["face_id"] for row in open_faces(table).to_table(columns=["face_id"]).to_pylist()]
    assert len(ids) == len(set(ids)) == len(first) + 1

    (raw / "a.jpg").unlink()
    run_extraction(raw, table, tmp_path, analyzer)
    remaining = [row["source_path"] for row in open_faces(table).to_table(columns=["source_path"]).to_pylist()]
    assert remaining and all(path.endswith("b.jpg") for path in remaining), "a removed source's faces are dropped"


def test_changed_settings_rebuild_the_table(tmp_path, media_dir, analyzer):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(media_dir / "photos" / "identities" / "barack_obama" / "obama.jpg", raw / "a.jpg")
    table = tmp_path / "faces.lance"
    run_extraction(raw, table, tmp_path, analyzer)
    plan = plan_extraction(raw, table, settings_fingerprint(FACES, dataclasses.replace(SIDE, min_face_size=80)), tmp_path)
    assert len(plan.pending) == 1 and open_faces(table).count_rows() == 0


def test_a_new_framing_is_recropped_from_stored_landmarks_without_detection(tmp_path, media_dir, analyzer):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_first_frames(media_dir / "videos" / "webcam_streamer.mp4", raw / "clip.mp4", 24)
    shutil.copy(media_dir / "photos" / "identities" / "barack_obama" / "obama.jpg", raw / "a photo.jpg")
    table, fresh = tmp_path / "faces.lance", tmp_path / "fresh" / "faces.lance"
    extract_folder(raw, table, FACES, SIDE, tmp_path, analyzer=analyzer)
    before = sorted(open_faces(table).to_table().to_pylist(), key=lambda row: row["face_id"])

    reframed = FaceOptions(face_type="full", size=96, jpeg_quality=80)
    reports = extract_folder(raw, table, reframed, SIDE, tmp_path, analyzer=None)  # no analyzer: nothing may detect
    assert reports == []
    after = sorted(open_faces(table).to_table().to_pylist(), key=lambda row: row["face_id"])
    assert read_json_metadata(open_faces(table), "faceflow.settings") == settings_fingerprint(reframed, SIDE)
    assert [row["face_id"] for row in after] == [row["face_id"] for row in before]
    for old, new in zip(before, after, strict=True):
        assert new["landmarks"] == old["landmarks"] and new["embedding"] == old["embedding"]
        assert (new["face_type"], new["crop_size"]) == ("full", 96) and new["matrix"] != old["matrix"]
        assert cv2.imdecode(np.frombuffer(new["image"], np.uint8), cv2.IMREAD_COLOR).shape == (96, 96, 3)

    # the same faces extracted from scratch with the new framing: identical crops
    extract_folder(raw, fresh, reframed, SIDE, tmp_path, analyzer=analyzer)
    expected = {row["face_id"]: row for row in open_faces(fresh).to_table().to_pylist()}
    assert sorted(expected) == sorted(row["face_id"] for row in after)
    for row in after:
        np.testing.assert_allclose(row["matrix"], expected[row["face_id"]]["matrix"], atol=1e-4)
        assert row["image"] == expected[row["face_id"]]["image"]
        assert row["blur"] == pytest.approx(expected[row["face_id"]]["blur"])


def write_first_frames(source, target, count):
    """A shorter copy of a clip: its first `count` frames, re-encoded."""
    info = probe_video(source)
    with VideoWriter(target, info.width, info.height, info.fps) as writer:
        for _, _, frame in itertools.islice(iter_frames(source), count):
            writer.write(frame)


def test_tracked_extraction_finds_every_face_and_smooths_landmarks(tmp_path, media_dir, analyzer):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_first_frames(media_dir / "videos" / "talking_head_a.mp4", raw / "talking.mp4", 100)
    tables = {}
    for strength in (0.0, 2.0):
        side = SideOptions(detect_every=5, embed_every=0, smooth_landmarks=strength)
        table = tmp_path / f"faces {strength}.lance"
        _, (report,) = run_extraction(raw, table, tmp_path, analyzer, side)
        assert report.status == "complete" and report.frames == 100
        tables[strength] = sorted(open_faces(table).to_table().to_pylist(), key=lambda row: row["frame_index"])
    for rows in tables.values():
        assert len({row["frame_index"] for row in rows}) >= 98, "a face in >= 98% of the frames"
        assert len({row["track_id"] for row in rows}) == 1
        assert len({tuple(row["embedding"]) for row in rows}) == 1, "embed_every 0: one descriptor per track, on every row"
    landmarks = {strength: [np.asarray(row["landmarks"]).reshape(68, 2) for row in rows] for strength, rows in tables.items()}
    assert jitter(landmarks[2.0]) < 0.5 * jitter(landmarks[0.0])
    for row, points in zip(tables[2.0], landmarks[2.0]):
        expected = compute_alignment(points, FACES.face_type, FACES.size).reshape(-1)
        np.testing.assert_allclose(row["matrix"], expected, atol=1e-3, err_msg="crops are aligned on the smoothed landmarks")


@pytest.mark.parametrize("field, value", [("detect_every", 0), ("embed_every", -1), ("smooth_landmarks", -0.5)])
def test_tracking_options_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        SideOptions(**{field: value})


def test_faces_placed_by_hand_replace_the_detector_and_rerun_only_their_source(tmp_path, media_dir, analyzer):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(media_dir / "photos" / "identities" / "barack_obama" / "obama.jpg", raw / "a.jpg")
    shutil.copy(media_dir / "photos" / "identities" / "joe_biden" / "biden.jpg", raw / "b.jpg")
    table = tmp_path / "faces.lance"
    found = {row["source_path"]: row for row in _extract_rows(raw, table, tmp_path, analyzer, SIDE)}
    blind = dataclasses.replace(SIDE, min_face_size=100_000)  # the detector now ignores every face
    blind_analyzer = create_face_analyzer(FACES, blind)
    shutil.rmtree(table)
    assert _extract_rows(raw, table, tmp_path, blind_analyzer, blind) == []
    a_path = "raw/a.jpg"
    overrides = {a_path: {0: [{"box": list(found[a_path]["bbox"])}]}}
    plan = plan_extraction(raw, table, settings_fingerprint(FACES, blind), tmp_path, overrides)
    assert [path.name for path in plan.pending] == ["a.jpg"], "only the source whose placed faces changed is redone"
    for path, source_id in plan.pending.items():
        extract_source(path, source_id, table, blind_analyzer, FACES, blind, tmp_path, overrides=overrides)
    rows = open_faces(table).to_table().to_pylist()
    assert [row["source_path"] for row in rows] == [a_path]
    placed, detected = np.asarray(rows[0]["landmarks"]).reshape(68, 2), np.asarray(found[a_path]["landmarks"]).reshape(68, 2)
    assert np.abs(placed - detected).max() < 3, "landmarks fitted in the given box match the detector's"
    assert plan_extraction(raw, table, settings_fingerprint(FACES, blind), tmp_path, overrides).pending == {}


def test_a_face_placed_on_a_frame_between_samples_is_extracted_too(tmp_path, media_dir, analyzer):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_first_frames(media_dir / "videos" / "webcam_streamer.mp4", raw / "clip.mp4", 20)
    sampled = _extract_rows(raw, tmp_path / "faces.lance", tmp_path, analyzer, SIDE)
    frames = sorted({row["frame_index"] for row in sampled})
    between = frames[0] + 1
    assert between not in frames, "the clip is sampled, so the next frame is skipped"
    box = sampled[0]["bbox"]
    overrides = {"raw/clip.mp4": {between: [{"box": list(box)}]}}
    table = tmp_path / "placed.lance"
    extract_folder(raw, table, FACES, SIDE, tmp_path, analyzer, overrides=overrides)
    rows = open_faces(table).to_table().to_pylist()
    assert sorted({row["frame_index"] for row in rows}) == sorted([*frames, between])


def _extract_rows(raw, table, root, analyzer, side):
    extract_folder(raw, table, FACES, side, root, analyzer)
    return open_faces(table).to_table().to_pylist()
