"""Extraction of a folder full of awkward and broken files: each broken one is named, the rest extracted.

One folder holds every case; it is extracted once (plan_extraction + extract_source, as the
extract flow does) and each test checks one file's report and rows.
"""

from __future__ import annotations

import shutil
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from tasks.align import transform_points
from tasks.extract import (
    FaceOptions,
    SideOptions,
    create_face_analyzer,
    extract_source,
    plan_extraction,
    settings_fingerprint,
)
from tasks.faceset import SOURCES_KEY, finalize_table, open_faces, read_json_metadata
from tests.tasks.test_extract import write_truncated_copy

FACES = FaceOptions(face_type="whole_face", size=128, jpeg_quality=90)
SIDE = SideOptions(fps=5, embeddings=False)
PHOTO = "photos/identities/barack_obama/obama.jpg"
BROKEN = ("truncated.mp4", "corrupt middle.mp4", "empty.mp4", "notes.mp4", "half photo.jpg")
EIGHT_K = (7680, 4320)


def write_cases(raw, media_dir):
    """Fill `raw` with one file per case; returns where and how much the 8K copy holds the photo (x offset, scale)."""
    photo = Image.open(media_dir / PHOTO).convert("RGB")
    write_truncated_copy(media_dir / "videos" / "talking_head_a.mp4", raw / "truncated.mp4")
    data = bytearray((media_dir / "videos" / "talking_head_a.mp4").read_bytes())
    middle = len(data) // 2
    data[middle: middle + 20000] = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    (raw / "corrupt middle.mp4").write_bytes(bytes(data))
    (raw / "empty.mp4").write_bytes(b"")
    (raw / "notes.mp4").write_text("this is not a video")
    jpeg = (media_dir / PHOTO).read_bytes()
    (raw / "half photo.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    photo.convert("CMYK").save(raw / "cmyk.jpg", quality=95)
    photo.convert("L").save(raw / "gray.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(255)
    rgba.save(raw / "rgba.png")
    sixteen = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(raw / "sixteen_bit.png")
    assert Image.open(raw / "sixteen_bit.png").mode.startswith("I;16") or Image.open(raw / "sixteen_bit.png").mode == "I"
    # 8K: the photo upscaled into the middle of a 7680x4320 canvas (4.5x)
    scale = 4.5
    large = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)
    canvas = Image.new("RGB", EIGHT_K, (90, 90, 90))
    canvas.paste(large.crop((0, 0, large.width, min(large.height, EIGHT_K[1]))), ((EIGHT_K[0] - large.width) // 2, 0))
    canvas.save(raw / "eight_k.png", compress_level=1)
    unicode_folder = raw / "ünïcødé folder 名前"
    unicode_folder.mkdir()
    shutil.copy(media_dir / PHOTO, unicode_folder / "фото с пробелом.jpg")
    shutil.copy(media_dir / "videos" / "no_faces.mp4", raw / "no_faces.mp4")
    shutil.copy(media_dir / "videos" / "rotated_hevc_60fps.mov", raw / "rotated hevc.mov")
    return (EIGHT_K[0] - large.width) // 2, scale


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, media_dir):
    root = tmp_path_factory.mktemp("bad input")
    raw = root / "data" / "raw" / "src"
    raw.mkdir(parents=True)
    eight_k_offset, eight_k_scale = write_cases(raw, media_dir)
    table = root / "data" / "src" / "faces.lance"
    analyzer = create_face_analyzer(FACES, SIDE)
    plan = plan_extraction(raw, table, settings_fingerprint(FACES, SIDE), root)
    reports, seconds = {}, {}
    for path, source_id in plan.pending.items():
        start = time.perf_counter()
        report = extract_source(path, source_id, table, analyzer, FACES, SIDE, root)
        seconds[path.name] = time.perf_counter() - start
        reports[path.name] = report
    finalize_table(table)
    rows = open_faces(table).to_table().to_pylist()
    by_file = {name: [row for row in rows if row["source_path"].endswith(name)] for name in reports}
    return {"reports": reports, "rows": by_file, "table": table, "seconds": seconds, "analyzer": analyzer,
            "raw": raw, "root": root, "eight_k": (eight_k_offset, eight_k_scale), "media": media_dir}


def test_every_file_was_tried(extracted):
    # one source per distinct file content (sources are identified by their bytes' hash)
    assert len(extracted["reports"]) == 13


@pytest.mark.parametrize("name", BROKEN)
def test_broken_files_are_named_and_fail_alone(extracted, name):
    report = extracted["reports"][name]
    assert report.status == "failed", f"{name} was reported {report.status}"
    assert name in report.error
    assert len(extracted["rows"][name]) == report.faces


def test_faces_before_a_decoding_error_are_kept(extracted):
    for name in ("truncated.mp4", "corrupt middle.mp4"):
        report = extracted["reports"][name]
        assert report.frames > 0 and report.faces > 0 and len(extracted["rows"][name]) == report.faces
    sources = read_json_metadata(open_faces(extracted["table"]), SOURCES_KEY)
    failed = {record["path"].rsplit("/", 1)[-1] for record in sources.values() if record["status"] == "failed"}
    assert failed == set(BROKEN), "failed sources are recorded, so the next run retries exactly them"


@pytest.mark.parametrize("name", ["cmyk.jpg", "gray.png", "rgba.png", "sixteen_bit.png", "фото с пробелом.jpg"])
def test_image_modes_and_odd_paths_give_the_same_face(extracted, name):
    report = extracted["reports"][name]
    assert report.status == "complete" and report.faces == 1, f"{name}: {report}"
    (row,) = extracted["rows"][name]
    (reference,) = extracted["rows"]["фото с пробелом.jpg"]
    assert "ünïcødé folder 名前/фото с пробелом.jpg" in reference["source_path"]
    np.testing.assert_allclose(np.reshape(row["landmarks"], (68, 2)), np.reshape(reference["landmarks"], (68, 2)),
                               atol=6)


def test_eight_k_image_is_detected_downscaled_and_aligned_at_full_size(extracted):
    report = extracted["reports"]["eight_k.png"]
    assert report.status == "complete" and report.faces == 1
    (row,) = extracted["rows"]["eight_k.png"]
    (reference,) = extracted["rows"]["фото с пробелом.jpg"]
    offset, scale = extracted["eight_k"]
    expected = np.reshape(reference["landmarks"], (68, 2)) * scale + [offset, 0]
    landmarks = np.reshape(row["landmarks"], (68, 2))
    face_width = row["bbox"][2] - row["bbox"][0]
    assert face_width > 800, "the box is in 8K pixels, not the detection copy's"
    assert np.abs(landmarks - expected).mean() < 0.03 * face_width
    crop = cv2.imdecode(np.frombuffer(row["image"], np.uint8), cv2.IMREAD_COLOR)
    reference_crop = cv2.imdecode(np.frombuffer(reference["image"], np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(crop.astype(np.float32) - reference_crop).mean() < 12


def test_clip_without_faces_is_complete_and_empty(extracted):
    report = extracted["reports"]["no_faces.mp4"]
    assert report.status == "complete" and report.frames >= 8 and report.faces == 0


def test_rotated_hevc_clip_gives_upright_faces(extracted):
    report = extracted["reports"]["rotated hevc.mov"]
    assert report.status == "complete" and report.faces >= 1
    for row in extracted["rows"]["rotated hevc.mov"]:
        landmarks = np.reshape(row["landmarks"], (68, 2))
        assert landmarks[36:48, 1].mean() < landmarks[30, 1] < landmarks[48:68, 1].mean(), "eyes, nose, mouth downwards"
        assert abs(row["roll"]) < 30
        x0, _, x1, _ = row["bbox"]
        assert x1 <= 1080 + 0.2 * (x1 - x0), "portrait frame: 1080 wide after the rotation"
        crop_points = transform_points(landmarks, np.reshape(row["matrix"], (2, 3)))
        assert crop_points[36:48, 1].mean() < crop_points[48:68, 1].mean()


def test_rerun_retries_only_the_broken_files_and_keeps_the_rest(extracted):
    table, raw, root = extracted["table"], extracted["raw"], extracted["root"]
    before = sorted(row["face_id"] for row in open_faces(table).to_table(columns=["face_id"]).to_pylist())
    plan = plan_extraction(raw, table, settings_fingerprint(FACES, SIDE), root)
    assert {path.name for path in plan.pending} == set(BROKEN)
    after = sorted(row["face_id"] for row in open_faces(table).to_table(columns=["face_id"]).to_pylist())
    kept = [face_id for face_id in before if face_id in set(after)]
    assert kept == after and len(after) == sum(len(extracted["rows"][name]) for name in extracted["reports"]
                                               if name not in BROKEN)
