"""`faceflow stage extract` killed midway and rerun ends with the same faces as a run never interrupted."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import lance
import numpy as np

from tests.flows.project import environment, run, set_params

SOURCES = {  # name in data/raw/src -> test media; videos are extracted first, in name order
    "a talking.mp4": "videos/talking_head_a.mp4",
    "b glasses.mp4": "videos/talking_head_glasses_audio.mp4",
    "obama.jpg": "photos/identities/barack_obama/obama.jpg",
    "biden.jpg": "photos/identities/joe_biden/biden.jpg",
}
COMMAND = ["faceflow", "stage", "extract", "src", "--root"]


def make_project(home: Path, project_root: Path, media_dir: Path) -> tuple[Path, dict[str, str]]:
    root = home / "project"
    raw = root / "data" / "raw" / "src"
    raw.mkdir(parents=True)
    shutil.copy(project_root / "params.yaml", root / "params.yaml")
    set_params(root, {("extract", "src", "fps"): 5, ("extract", "src", "embeddings"): False,
                      ("extract", "faces", "size"): 96})
    for name, media in SOURCES.items():
        shutil.copy(media_dir / media, raw / name)
    return root, environment(home)


def count_rows(table: Path) -> int:
    try:
        return lance.dataset(str(table)).count_rows()
    except (OSError, ValueError):  # not created yet, or caught between two commits
        return 0


def read_faces(table: Path) -> dict[str, np.ndarray]:
    rows = lance.dataset(str(table)).to_table(columns=["face_id", "landmarks"]).to_pylist()
    ids = [row["face_id"] for row in rows]
    assert len(ids) == len(set(ids)), "duplicated faces"
    return {row["face_id"]: np.reshape(row["landmarks"], (68, 2)) for row in rows}


def test_rerun_after_a_kill_gives_the_faces_of_an_uninterrupted_run(tmp_path, project_root, media_dir):
    reference_root, reference_env = make_project(tmp_path / "reference", project_root, media_dir)
    root, env = make_project(tmp_path / "interrupted", project_root, media_dir)
    table = root / "data" / "src" / "faces.lance"

    # the reference runs beside the interrupted one (Prefect takes seconds to start)
    reference = subprocess.Popen([*COMMAND, str(reference_root)], cwd=reference_root, env=reference_env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    interrupted = subprocess.Popen([*COMMAND, str(root)], cwd=root, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    try:
        # kill once the first video's faces are in the table: the second video and the photos are still to come
        deadline = time.monotonic() + 240
        while count_rows(table) == 0 and interrupted.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        interrupted.send_signal(signal.SIGKILL)
        assert interrupted.wait(timeout=30) == -signal.SIGKILL, "extraction ended before it could be interrupted"
    finally:
        if interrupted.poll() is None:
            interrupted.kill()
            interrupted.wait()
    partial = read_faces(table)
    assert partial, "the kill came after some faces were written"

    output, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, output[-4000:]
    expected = read_faces(reference_root / "data" / "src" / "faces.lance")
    assert len(partial) < len(expected), "the kill left work to do"

    run([*COMMAND, str(root)], root, env)
    resumed = read_faces(table)
    assert set(resumed) == set(expected)
    assert {face_id.split("-")[0] for face_id in expected} and len({face_id.split("-")[0] for face_id in expected}) == 4
    for face_id, landmarks in expected.items():
        np.testing.assert_allclose(resumed[face_id], landmarks, atol=1e-3, err_msg=face_id)
    for face_id, landmarks in partial.items():  # faces written before the kill are the same faces
        np.testing.assert_allclose(resumed[face_id], landmarks, atol=1e-3, err_msg=face_id)
