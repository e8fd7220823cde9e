"""The pipeline end to end on tiny params, in a throwaway copy of the project: DVC decides what runs."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from tasks.dfm_check import check_dfm
from tasks.video import probe_video
from tests.flows.project import ran_stages, set_params

DST_CLIP = "data/raw/dst/dst_pexels_7154235.mp4"


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_outputs_of_a_full_run(pipeline_project):
    root = pipeline_project.root
    render = root / "renders" / "dst_pexels_7154235.mp4"
    source, output = probe_video(root / DST_CLIP), probe_video(render)
    assert output.frame_count == source.frame_count and output.fps == source.fps
    assert (output.width, output.height) == (source.width, source.height)
    sidecar = json.loads((root / "renders" / "dst_pexels_7154235.mp4.provenance.json").read_text())
    assert sidecar["synthetic"] is True and sidecar["revision"]["git"]["commit"]
    assert sidecar["file_sha256"] == digest(render)
    assert "# Pose coverage" in (root / "reports" / "coverage.md").read_text()
    report = check_dfm(root / "exports" / "faceflow.dfm")
    assert report.resolution == 32
    for stage in ("warp", "sharpen"):
        assert list((root / "logs" / stage).rglob("events.out.tfevents.*")), f"no TensorBoard events for {stage}"
        assert (root / "checkpoints" / stage / "model.safetensors").is_file()
        metrics = json.loads((root / "metrics" / "train" / f"{stage}.json").read_text())
        assert metrics["iterations"] > 0
    assert json.loads((root / "metrics" / "train" / "sharpen.json").read_text())["iterations"] == 50, "sharpen continues warp"
    assert json.loads((root / "metrics" / "merge.json").read_text())["frames"] == source.frame_count


def test_nothing_changed_runs_nothing(pipeline_project):
    start = time.perf_counter()
    result = pipeline_project.run("dvc", "repro")
    elapsed = time.perf_counter() - start
    assert ran_stages(result.stdout) == set(), result.stdout
    print(f"no-op dvc repro: {elapsed:.2f} s")


def test_merge_params_rerun_only_merge(pipeline_project):
    set_params(pipeline_project.root, {("merge", "crf"): 23})
    result = pipeline_project.run("dvc", "repro")
    assert ran_stages(result.stdout) == {"merge"}
    pipeline_project.commit("merge: crf 23")


def test_second_training_stage_params_rerun_it_merge_and_export(pipeline_project):
    set_params(pipeline_project.root, {("train", "stages", "sharpen", "learning_rate"): 0.00002})
    result = pipeline_project.run("dvc", "repro")
    assert ran_stages(result.stdout) == {"train@sharpen", "merge", "export"}
    pipeline_project.commit("sharpen: lr 2e-5")


def test_checkout_of_an_earlier_revision_restores_its_outputs(pipeline_project):
    root = pipeline_project.root
    outputs = ["checkpoints/sharpen/model.safetensors", "renders/dst_pexels_7154235.mp4", "exports/faceflow.dfm", "data/src/faces.lance"]
    latest = pipeline_project.run("git", "rev-parse", "HEAD").stdout.strip()
    now = {name: digest_tree(root / name) for name in outputs}
    pipeline_project.run("git", "checkout", "-q", pipeline_project.first_revision)
    pipeline_project.run("dvc", "checkout", "--force")
    then = {name: digest_tree(root / name) for name in outputs}
    assert then["checkpoints/sharpen/model.safetensors"] != now["checkpoints/sharpen/model.safetensors"]
    assert then["renders/dst_pexels_7154235.mp4"] != now["renders/dst_pexels_7154235.mp4"]
    assert then["data/src/faces.lance"] == now["data/src/faces.lance"], "extraction never changed"
    status = pipeline_project.run("dvc", "status", "--json").stdout
    assert json.loads(status) == {}, f"after checkout the workspace matches the earlier revision: {status}"
    pipeline_project.run("git", "checkout", "-q", latest)
    pipeline_project.run("dvc", "checkout", "--force")
    assert {name: digest_tree(root / name) for name in outputs} == now


def digest_tree(path) -> str:
    if path.is_file():
        return digest(path)
    return hashlib.sha256("".join(f"{p.relative_to(path)}:{digest(p)}" for p in sorted(path.rglob("*")) if p.is_file()).encode()).hexdigest()


@pytest.mark.usefixtures("prefect_api")
def test_prefect_pipeline_twice_reports_every_stage_cached(pipeline_project, monkeypatch):
    from flows.pipeline import pipeline_flow

    monkeypatch.setenv("PATH", pipeline_project.env["PATH"])
    monkeypatch.setenv("FACEFLOW_PROGRESS", "0")
    first = pipeline_flow(pipeline_project.root)
    assert set(first) >= {"extract@src", "extract@dst", "curate@src", "curate@dst", "coverage", "mask@src", "mask@dst", "init", "train@warp", "train@sharpen", "merge", "export"}
    second = pipeline_flow(pipeline_project.root)
    assert set(second.values()) == {"cached"}, second


@pytest.mark.usefixtures("prefect_api")
def test_prefect_pipeline_runs_a_stale_stage(pipeline_project, monkeypatch):
    from flows.pipeline import pipeline_flow

    monkeypatch.setenv("PATH", pipeline_project.env["PATH"])
    monkeypatch.setenv("FACEFLOW_PROGRESS", "0")
    set_params(pipeline_project.root, {("export", "name"): "renamed"})
    outcome = pipeline_flow(pipeline_project.root)
    assert [name for name, result in outcome.items() if result == "ran"] == ["export"]
    assert (pipeline_project.root / "exports" / "renamed.dfm").is_file()
    pipeline_project.commit("export: renamed")
