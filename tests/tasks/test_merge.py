"""Merge on a real talking-head clip with audio: every frame kept, rate and audio kept, faces swapped."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.networks import build_model
from tasks.extract import FaceOptions, SideOptions, extract_folder
from tasks.faceset import hash_file
from tasks.merge import FaceSwapper, MergeOptions, load_dst_faces, render_video, swap_frame
from tasks.video import iter_frames, probe_video

CLIP = "videos/talking_head_glasses_audio.mp4"


@pytest.fixture(scope="module")
def dst_project(tmp_path_factory, media_dir):
    root = tmp_path_factory.mktemp("merge")
    raw = root / "raw"
    raw.mkdir()
    (raw / "talk.mp4").symlink_to(media_dir / CLIP)
    faces, side = FaceOptions(size=128), SideOptions(upsample=0, embeddings=False)
    table = root / "faces.lance"
    extract_folder(raw, table, faces, side, root)
    return root, raw / "talk.mp4", table


@pytest.fixture(scope="module")
def swapper():
    torch.manual_seed(0)
    return FaceSwapper(build_model(ModelConfig(resolution=32, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=4)))


def audio_duration(path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        last = max(packet.pts + (packet.duration or 0) for packet in container.demux(stream) if packet.pts is not None)
        return float((last - (stream.start_time or 0)) * stream.time_base)


def test_render_keeps_frame_count_rate_and_audio(dst_project, swapper):
    root, clip, table = dst_project
    output = root / "renders" / "talk.mp4"
    report = render_video(clip, table, swapper, output, MergeOptions(), {"comment": "synthetic"})
    source, render = probe_video(clip), probe_video(output)
    assert render.frame_count == source.frame_count == report.frames
    assert render.fps == source.fps and (render.width, render.height) == (source.width, source.height)
    assert render.has_audio
    assert abs(audio_duration(output) - audio_duration(clip)) < 0.1
    assert report.swapped_faces >= 0.95 * report.frames
    with av.open(str(output)) as container:
        assert container.metadata.get("comment") == "synthetic"


def test_swapped_frames_change_only_around_the_face(dst_project, swapper):
    _, clip, table = dst_project
    faces = load_dst_faces(table, hash_file(clip))
    index, frame = next((index, frame) for index, _, frame in iter_frames(clip) if index in faces)
    swapped = swap_frame(frame.copy(), faces[index], swapper, MergeOptions(color_transfer="rct"))
    changed = np.any(swapped != frame, axis=2)
    assert changed.sum() > 500, "the face region is replaced"
    x0, y0, x1, y1 = (int(value) for value in faces[index][0].landmarks.min(0).tolist() + faces[index][0].landmarks.max(0).tolist())
    height = y1 - y0
    ys, xs = np.nonzero(changed)
    assert xs.min() >= x0 - height and xs.max() <= x1 + height and ys.max() <= y1 + height
    assert swap_frame(frame, [], swapper, MergeOptions()) is frame, "a frame with no face passes through unchanged"
