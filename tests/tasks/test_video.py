"""tasks/video.py against the real clips of the test media."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tasks.detect import DlibAnalyzer
from tasks.video import VideoError, VideoWriter, iter_frames, probe_video

SOURCE_CLIP = "demo/src_pexels_8136210.mp4"
DESTINATION_CLIP = "demo/dst_pexels_7154235.mp4"
ROTATED_CLIP = "videos/rotated_hevc_60fps.mov"
AUDIO_CLIP = "videos/talking_head_b_audio.mp4"


def read_container_facts(path: Path) -> tuple[int, int, Fraction, int]:
    """What the container itself states: coded width, height, average rate, sample count."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height, stream.average_rate, stream.frames


@pytest.mark.parametrize("clip, size, fps, frames", [
    (SOURCE_CLIP, (296, 400), 50, 500),
    (DESTINATION_CLIP, (640, 576), 15, 35),
])
def test_probe_matches_the_container(media_dir, clip, size, fps, frames):
    info = probe_video(media_dir / clip)
    width, height, rate, count = read_container_facts(media_dir / clip)
    assert (info.width, info.height) == (width, height) == size
    assert info.fps == rate == fps
    assert info.frame_count == count == frames
    assert info.duration == pytest.approx(frames / fps, abs=0.05)
    assert info.rotation == 0 and not info.has_audio


def test_probe_reports_display_size_of_rotated_clip(media_dir):
    info = probe_video(media_dir / ROTATED_CLIP)
    assert (info.width, info.height) == (1080, 1920)
    assert info.rotation == 90
    assert info.fps == 60 and info.codec == "hevc" and info.has_audio
    assert info.frame_count == read_container_facts(media_dir / ROTATED_CLIP)[3]


def test_rotated_clip_frames_come_out_upright(media_dir):
    analyzer = DlibAnalyzer(max_side=480)
    frames = list(iter_frames(media_dir / ROTATED_CLIP, every_n=33))
    assert [index for index, _, _ in frames] == [0, 33]
    for _, _, frame in frames:
        assert frame.shape == (1920, 1080, 3)
        faces = analyzer.detect(frame)
        assert len(faces) == 1
        landmarks = faces[0].landmarks
        assert landmarks[36:48, 1].mean() < landmarks[48:60, 1].mean()  # eyes above the mouth


def test_iter_frames_yields_every_frame_in_order(media_dir):
    path = media_dir / DESTINATION_CLIP
    frames = list(iter_frames(path))
    assert [index for index, _, _ in frames] == list(range(probe_video(path).frame_count))
    timestamps = np.array([timestamp for _, timestamp, _ in frames])
    np.testing.assert_allclose(timestamps, np.arange(len(frames)) / 15, atol=1e-3)
    assert all(frame.shape == (576, 640, 3) and frame.dtype == np.uint8 for _, _, frame in frames)
    assert not np.array_equal(frames[0][2], frames[-1][2])


def test_fps_sampling_keeps_every_fifth_frame_of_a_50fps_clip(media_dir):
    indices = [index for index, _, _ in iter_frames(media_dir / SOURCE_CLIP, fps=10)]
    assert indices == list(range(0, 500, 5))


def test_fps_sampling_keeps_the_frame_nearest_each_sample_time(media_dir):
    indices = [index for index, _, _ in iter_frames(media_dir / SOURCE_CLIP, fps=7)]
    expected = [round(sample * 50 / 7) for sample in range(70) if round(sample * 50 / 7) < 500]
    assert indices == expected


def test_every_n_keeps_every_nth_frame(media_dir):
    indices = [index for index, _, _ in iter_frames(media_dir / DESTINATION_CLIP, every_n=7)]
    assert indices == [0, 7, 14, 21, 28]


def test_included_frames_come_in_order_whether_sampled_or_not(media_dir):
    every = {index: frame for index, _, frame in iter_frames(media_dir / SOURCE_CLIP)}
    frames = list(iter_frames(media_dir / SOURCE_CLIP, fps=10, include=[0, 3, 5, 7, 8, 499]))
    indices = [index for index, _, _ in frames]
    assert indices == sorted(set(range(0, 500, 5)) | {3, 7, 8, 499})
    for index, timestamp, frame in frames:
        assert np.array_equal(frame, every[index]) and timestamp == pytest.approx(index / 50, abs=1e-3)
    assert [index for index, _, _ in iter_frames(media_dir / DESTINATION_CLIP, every_n=7, include=[1])] == [0, 1, 7, 14, 21, 28]


def test_truncated_copy_raises_naming_the_file(media_dir, tmp_path):
    data = (media_dir / SOURCE_CLIP).read_bytes()
    truncated = tmp_path / "truncated clip.mp4"
    truncated.write_bytes(data[: len(data) * 4 // 10])
    with pytest.raises(VideoError, match="truncated clip.mp4"):
        probe_video(truncated)
    with pytest.raises(VideoError, match="truncated clip.mp4"):
        list(iter_frames(truncated))


def test_truncated_stream_raises_after_the_frames_it_could_read(media_dir, tmp_path):
    # index first ("faststart"), so the cut file still opens and loses its last samples
    complete = tmp_path / "faststart.mp4"
    with av.open(str(media_dir / SOURCE_CLIP)) as source, \
            av.open(str(complete), "w", options={"movflags": "faststart"}) as output:
        stream = output.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                output.mux(packet)
    data = complete.read_bytes()
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(data[: len(data) * 4 // 10])
    read = []
    with pytest.raises(VideoError, match=r"cut\.mp4.*after (\d+) frames") as raised:
        for index, _, _ in iter_frames(truncated):
            read.append(index)
    assert 0 < len(read) < 500
    assert f"after {len(read)} frames" in str(raised.value)


@pytest.mark.parametrize("name, content", [("empty.mp4", b""), ("notes.mp4", b"this is a text file\n" * 20)])
def test_non_videos_raise_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(VideoError, match=name):
        probe_video(path)
    with pytest.raises(VideoError, match=name):
        next(iter_frames(path))


def test_writer_round_trip_keeps_rate_count_audio_and_metadata(media_dir, tmp_path):
    source = media_dir / AUDIO_CLIP
    info = probe_video(source)
    output = tmp_path / "out" / "merged.mp4"
    written = []
    with VideoWriter(output, info.width, info.height, info.fps, audio_from=source,
                     metadata={"comment": "faceflow round trip"}) as writer:
        for index, _, frame in iter_frames(source):
            if index == 30:
                break
            writer.write(frame)
            written.append(frame)
    result = probe_video(output)
    assert (result.width, result.height, result.fps) == (info.width, info.height, info.fps)
    assert result.frame_count == 30
    assert result.has_audio
    assert result.duration == pytest.approx(1.0, abs=0.01)
    with av.open(str(output)) as container:
        assert container.metadata.get("comment") == "faceflow round trip"
        audio = container.streams.audio[0]
        assert float(audio.duration * audio.time_base) == pytest.approx(1.0, abs=0.05)
    decoded = [frame for _, _, frame in iter_frames(output)]
    assert len(decoded) == 30
    assert np.abs(decoded[-1].astype(int) - written[-1]).mean() < 3  # crf 18: close to what was written
    assert np.abs(decoded[-1].astype(int) - written[0]).mean() > np.abs(decoded[-1].astype(int) - written[-1]).mean()
    assert sorted(os.listdir(output.parent)) == ["merged.mp4"]  # no temporary file left behind


def test_writer_to_matroska_with_odd_size_counts_exactly(media_dir, tmp_path):
    frames = [frame[:75, :101] for _, _, frame in iter_frames(media_dir / DESTINATION_CLIP)]
    output = tmp_path / "odd.mkv"
    with VideoWriter(output, 101, 75, Fraction(15)) as writer:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame))
    info = probe_video(output)
    assert info.frame_count == len(frames) == 35  # Matroska states no count: packets are counted
    assert info.fps == 15
    assert (info.width, info.height) == (102, 76)  # padded to even for yuv420p


def test_writer_leaves_nothing_when_the_block_fails(media_dir, tmp_path):
    _, _, frame = next(iter_frames(media_dir / DESTINATION_CLIP))
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "never.mp4", 640, 576, Fraction(15)) as writer:
            writer.write(frame)
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_unwritable_path_and_wrong_frames(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(VideoError, match="a_file/out.mp4"):
        VideoWriter(blocker / "out.mp4", 64, 64, Fraction(30))
    with VideoWriter(tmp_path / "small.mp4", 64, 64, Fraction(30)) as writer:
        with pytest.raises(ValueError, match="64, 64, 3"):
            writer.write(np.zeros((32, 64, 3), np.uint8))
        writer.write(np.zeros((64, 64, 3), np.uint8))
    assert probe_video(tmp_path / "small.mp4").frame_count == 1


def test_writer_passes_the_preset_to_the_encoder_and_checks_it(media_dir, tmp_path):
    frames = [frame for index, _, frame in iter_frames(media_dir / DESTINATION_CLIP) if index < 10]
    settings = {}
    for preset in ("ultrafast", "faster", None):
        output = tmp_path / f"{preset}.mp4"
        with VideoWriter(output, frames[0].shape[1], frames[0].shape[0], Fraction(15), preset=preset) as writer:
            for frame in frames:
                writer.write(frame)
        with av.open(str(output)) as container:  # x264 writes its settings into the first frame
            first = bytes(next(container.demux(container.streams.video[0])))
        settings[preset] = first[first.index(b"options: "):].split(b"\x00")[0].decode()
        assert probe_video(output).frame_count == 10
    assert "cabac=0" in settings["ultrafast"] and "cabac=1" in settings["faster"]  # ultrafast turns CABAC off
    assert "subme=4" in settings["faster"] and "subme=7" in settings[None]  # None keeps x264's own medium
    with pytest.raises(ValueError, match="preset must be one of .*'warp9'"):
        VideoWriter(tmp_path / "bad.mp4", 64, 64, Fraction(30), preset="warp9")
