"""C2PA signing with the project-local identity: made once, private key kept private, manifests that read back
as AI-generated, and tampering detected."""

from __future__ import annotations

import stat
from fractions import Fraction
from itertools import islice

import cv2
import pytest

from tasks.c2pa_signing import (CA_FILE, DIGITAL_SOURCE_TYPE, KEY_FILE, PROVENANCE_DIR, FileSigner, SigningError,
                                ensure_signing_identity, read_manifest, sign_render)
from tasks.video import VideoWriter, iter_frames

SUMMARY = {"git_commit": "0123456789abcdef", "dvc_lock_sha256": "ab" * 32, "watermark_revision_tag": 7}


@pytest.fixture
def short_video(tmp_path, media_dir):
    """Ten frames of a real clip written the way merge writes a render."""
    path = tmp_path / "render.mp4"
    frames = [frame for _, _, frame in islice(iter_frames(media_dir / "videos/talking_head_a.mp4"), 10)]
    with VideoWriter(path, frames[0].shape[1], frames[0].shape[0], Fraction(30)) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def test_identity_is_made_once_with_a_private_key(tmp_path):
    identity = ensure_signing_identity(tmp_path)
    assert identity.folder == tmp_path / PROVENANCE_DIR
    assert stat.S_IMODE((identity.folder / KEY_FILE).stat().st_mode) == 0o600
    assert (identity.folder / ".gitignore").read_text().strip().endswith("*")
    key = (identity.folder / KEY_FILE).read_bytes()
    assert ensure_signing_identity(tmp_path).folder == identity.folder and (identity.folder / KEY_FILE).read_bytes() == key
    (identity.folder / CA_FILE).unlink()
    with pytest.raises(SigningError, match="lacks ca.pem; delete the folder"):
        ensure_signing_identity(tmp_path)


def test_signed_video_reads_back_as_ai_generated(tmp_path, short_video):
    identity = ensure_signing_identity(tmp_path)
    assert sign_render(short_video, identity, SUMMARY) == 1
    report = read_manifest(short_video, identity.ca_path)
    assert report.status == "found" and report.trusted and not report.problems
    assert report.digital_source_type == DIGITAL_SOURCE_TYPE and report.claim_generator.startswith("faceflow")
    assert report.faceflow["git_commit"] == SUMMARY["git_commit"] and "faceflow renders" in report.signer
    elsewhere = read_manifest(short_video)  # without the project's CA: intact, but the signer is nobody's known signer
    assert elsewhere.status == "found" and not elsewhere.trusted
    other = ensure_signing_identity(tmp_path / "other-project")
    assert not read_manifest(short_video, other.ca_path).trusted


def test_a_changed_byte_invalidates_the_manifest(tmp_path, short_video):
    identity = ensure_signing_identity(tmp_path)
    FileSigner(identity).sign(short_video, SUMMARY)
    data = bytearray(short_video.read_bytes())
    data[data.find(b"mdat") + 400] ^= 0x01  # one bit of the encoded frames
    tampered = tmp_path / "tampered.mp4"
    tampered.write_bytes(bytes(data))
    report = read_manifest(tampered, identity.ca_path)
    assert report.status == "invalid" and any("mismatch" in problem for problem in report.problems)


def test_png_frames_are_signed_and_unlabelled_media_reads_as_missing(tmp_path, media_dir):
    identity = ensure_signing_identity(tmp_path)
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, _, frame in islice(iter_frames(media_dir / "videos/talking_head_a.mp4"), 2):
        cv2.imwrite(str(folder / f"{index:06d}.png"), frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])  # as a PNG render
    assert sign_render(folder, identity, SUMMARY) == 2
    assert {read_manifest(path, identity.ca_path).status for path in folder.iterdir()} == {"found"}
    assert all(cv2.imread(str(path)) is not None for path in folder.iterdir()), "signed PNGs still decode"
    assert read_manifest(media_dir / "videos/talking_head_a.mp4").status == "missing"
    assert read_manifest(media_dir / "photos/misc/Tom_Hanks_54745.png").status == "missing"
    text = tmp_path / "notes.txt"
    text.write_text("not media")
    with pytest.raises(SigningError, match="notes.txt"):
        FileSigner(identity).sign(text, SUMMARY)
