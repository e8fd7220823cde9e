"""faceflow history and rollback on a small real project: git, DVC, two revisions of a fake training chain.

The stages are stand-ins (a script that writes a checkpoint from its params and inputs) so that the
project runs in seconds; git, DVC, the cache and the CLI are all real.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.history import HistoryError, diff_params, list_history, rollback
from tests.flows.project import environment, run

STAGE_SCRIPT = '''
import hashlib, json, sys
from pathlib import Path
import yaml
name, previous = sys.argv[1], sys.argv[2]
options = yaml.safe_load(Path("params.yaml").read_text())["train"]["stages"][name]
start = Path(f"checkpoints/{previous}/weights.bin").read_bytes()
faces = Path("data/src/faces.bin").read_bytes()
weights = hashlib.sha256(start + faces + json.dumps(options, sort_keys=True).encode()).digest() * 64
Path(f"checkpoints/{name}").mkdir(parents=True, exist_ok=True)
Path(f"checkpoints/{name}/weights.bin").write_bytes(weights)
Path("metrics/train").mkdir(parents=True, exist_ok=True)
metrics = {"total": options["learning_rate"] * 1000, "score": weights[0] / 255, "iterations": options["iterations"]}
Path(f"metrics/train/{name}.json").write_text(json.dumps(metrics))
'''

DVC_YAML = {
    "stages": {
        "extract": {
            "cmd": "python -c \"from pathlib import Path; Path('data/src/faces.bin').write_bytes("
                   "Path('data/raw/src/clip.bin').read_bytes() + Path('data/src/rejects.yaml').read_bytes())\"",
            "deps": ["data/raw/src", "data/src/rejects.yaml"],
            "outs": ["data/src/faces.bin"],
        },
        "init": {
            "cmd": "python -c \"from pathlib import Path; Path('checkpoints/init').mkdir(parents=True, exist_ok=True); "
                   "Path('checkpoints/init/weights.bin').write_bytes(b'seed')\"",
            "params": ["train.model"],
            "outs": ["checkpoints/init"],
        },
        "train": {
            "foreach": {"warp": {"previous": "init"}, "sharpen": {"previous": "warp"}},
            "do": {
                "cmd": "python stage.py ${key} ${item.previous}",
                "deps": ["stage.py", "checkpoints/${item.previous}", "data/src/faces.bin"],
                "params": ["train.model", "train.stages.${key}"],
                "outs": ["checkpoints/${key}"],
                "metrics": [{"metrics/train/${key}.json": {"cache": False}}],
            },
        },
    }
}

PARAMS = {
    "train": {
        "model": {"resolution": 32, "ae_dims": 32, "e_dims": 8, "d_dims": 8, "d_mask_dims": 4},
        "stages": {"warp": {"iterations": 10, "learning_rate": 0.0003}, "sharpen": {"iterations": 5, "learning_rate": 0.0001}},
    }
}


class Project:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env

    def run(self, *command: str, check: bool = True):
        return run(list(command), self.root, self.env, check=check)

    def set_stage_option(self, stage: str, key: str, value: object) -> None:
        params = yaml.safe_load((self.root / "params.yaml").read_text())
        params["train"]["stages"][stage][key] = value
        (self.root / "params.yaml").write_text("# comments are kept\n" + yaml.safe_dump(params, sort_keys=False))

    def commit(self, message: str) -> str:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)
        return self.run("git", "rev-parse", "HEAD").stdout.strip()

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> tuple[Project, dict[str, dict[str, bytes]]]:
    """Two committed runs: revision "first" and revision "second" (warp iterations, sharpen lr and a reject changed)."""
    home = tmp_path_factory.mktemp("history")
    project = Project(home / "project", environment(home))
    project.root.mkdir()
    (project.root / "stage.py").write_text(STAGE_SCRIPT)
    (project.root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (project.root / "params.yaml").write_text("# comments are kept\n" + yaml.safe_dump(PARAMS, sort_keys=False))
    (project.root / "data/raw/src").mkdir(parents=True)
    (project.root / "data/src").mkdir()
    (project.root / "data/raw/src/clip.bin").write_bytes(b"raw video bytes")
    (project.root / "data/src/rejects.yaml").write_text("{}\n")
    project.run("git", "init", "-q")
    project.run("dvc", "init", "-q")
    project.run("dvc", "add", "-q", "data/raw/src")
    project.run("dvc", "repro", "-q")
    snapshots = {}
    files = ("params.yaml", "checkpoints/warp/weights.bin", "checkpoints/sharpen/weights.bin", "data/src/rejects.yaml",
             "metrics/train/sharpen.json")
    snapshots["first"] = {path: project.read(path) for path in files}
    snapshots["first"]["commit"] = project.commit("First run").encode()
    project.set_stage_option("warp", "iterations", 20)
    project.set_stage_option("sharpen", "learning_rate", 0.00005)
    (project.root / "data/src/rejects.yaml").write_text("face-1: blurry\n")
    project.run("dvc", "repro", "-q")
    snapshots["second"] = {path: project.read(path) for path in files}
    snapshots["second"]["commit"] = project.commit("warp longer, sharpen slower").encode()
    assert snapshots["first"]["checkpoints/warp/weights.bin"] != snapshots["second"]["checkpoints/warp/weights.bin"]
    return project, snapshots


@pytest.fixture
def project(origin, tmp_path) -> tuple[Project, dict[str, dict[str, bytes]]]:
    """A private copy of the two-revision project (repository, workspace and DVC cache)."""
    source, snapshots = origin
    root = tmp_path / "project"
    shutil.copytree(source.root, root, symlinks=True)
    return Project(root, source.env), snapshots


def test_diff_params_names_dotted_keys() -> None:
    before = {"train": {"stages": {"warp": {"learning_rate": 0.0003, "seed": 0}}}, "merge": {"crf": 18}}
    after = {"train": {"stages": {"warp": {"learning_rate": 0.0001, "seed": 0}, "gan": {}}}, "export": {"name": "x"}}
    assert [change.describe() for change in diff_params(before, after)] == [
        "train.stages.warp.learning_rate: 0.0003 -> 0.0001",
        "train.stages.gan: (none) -> {}",
        'export.name: (none) -> "x"',
        "merge.crf: 18 -> (none)",
    ]


def test_history_shows_changed_keys_and_metrics(project) -> None:
    project, snapshots = project
    revisions = list_history(project.root)
    assert [revision.subject for revision in revisions] == ["warp longer, sharpen slower", "First run"]
    latest, first = revisions
    assert latest.commit == snapshots["second"]["commit"].decode()
    assert [change.describe() for change in latest.changes] == ["train.stages.warp.iterations: 10 -> 20",
                                                                "train.stages.sharpen.learning_rate: 0.0001 -> 5e-05"]
    assert first.first and not first.changes
    assert latest.metrics["sharpen"]["total"] == pytest.approx(0.05) and first.metrics["sharpen"]["total"] == pytest.approx(0.1)
    assert latest.metrics["warp"]["iterations"] == 20

    output = CliRunner().invoke(app, ["history", "--root", str(project.root), "--limit", "1"])
    assert output.exit_code == 0, output.output
    assert "train.stages.sharpen.learning_rate: 0.0001 -> 5e-05" in output.stdout
    assert "train@sharpen: score" in output.stdout and "loss 0.05" in output.stdout
    assert "First run" not in output.stdout, "--limit 1 shows only the newest revision"


def test_rollback_restores_checkpoints_params_and_decisions(project) -> None:
    project, snapshots = project
    first = snapshots["first"]["commit"].decode()
    result = rollback(project.root, first[:7])
    for path in ("params.yaml", "checkpoints/warp/weights.bin", "checkpoints/sharpen/weights.bin", "data/src/rejects.yaml",
                 "metrics/train/sharpen.json"):
        assert project.read(path) == snapshots["first"][path], path
    assert result.stale_stages == [], "everything is up to date: nothing retrains"
    assert project.run("dvc", "status", "--json").stdout.strip() == "{}"
    assert result.commit and project.run("git", "status", "--porcelain").stdout == ""
    assert project.run("git", "log", "-1", "--format=%s").stdout.startswith(f"Roll back the pipeline to {first[:7]}: First run")
    newest = list_history(project.root)[0]
    assert "train.stages.sharpen.learning_rate: 5e-05 -> 0.0001" in [change.describe() for change in newest.changes]


def test_rollback_of_one_stage_keeps_later_settings(project) -> None:
    project, snapshots = project
    first, second = snapshots["first"], snapshots["second"]
    result = rollback(project.root, first["commit"].decode(), stage="warp", commit=False)
    assert project.read("checkpoints/warp/weights.bin") == first["checkpoints/warp/weights.bin"]
    assert project.read("data/src/rejects.yaml") == first["data/src/rejects.yaml"], "the decisions before warp come back"
    params = yaml.safe_load(project.read("params.yaml"))
    assert params["train"]["stages"]["warp"]["iterations"] == 10, "warp's settings come back"
    assert params["train"]["stages"]["sharpen"]["learning_rate"] == 0.00005, "later stages keep today's settings"
    assert project.read("params.yaml").startswith(b"# comments are kept")
    assert set(result.restored_stages) == {"extract", "init", "train@warp"}
    assert result.stale_stages == ["train@sharpen"], "only what follows the restored stage runs again"
    assert project.read("checkpoints/sharpen/weights.bin") == second["checkpoints/sharpen/weights.bin"]
    assert result.commit is None and "params.yaml" in result.changed_files
    assert project.run("git", "rev-parse", "HEAD").stdout.strip() == second["commit"].decode()


def test_rollback_refuses_a_dirty_tree_and_changes_nothing(project) -> None:
    project, snapshots = project
    (project.root / "params.yaml").write_text(project.read("params.yaml").decode() + "# edited\n")
    with pytest.raises(HistoryError, match=r"uncommitted changes to params\.yaml .*commit them"):
        rollback(project.root, snapshots["first"]["commit"].decode())
    assert project.read("checkpoints/warp/weights.bin") == snapshots["second"]["checkpoints/warp/weights.bin"]

    output = CliRunner().invoke(app, ["rollback", "HEAD~1", "--root", str(project.root)])
    assert output.exit_code == 1 and "uncommitted changes to params.yaml" in output.output


def test_rollback_refuses_when_the_cache_lacks_the_checkpoint(project) -> None:
    project, snapshots = project
    lock = yaml.safe_load(run(["git", "show", f"{snapshots['first']['commit'].decode()}:dvc.lock"], project.root,
                              project.env).stdout)
    warp = next(out for out in lock["stages"]["train@warp"]["outs"] if out["path"] == "checkpoints/warp")
    (project.root / ".dvc/cache/files/md5" / warp["md5"][:2] / warp["md5"][2:]).unlink()  # the directory's listing
    with pytest.raises(HistoryError, match=r"no copy of checkpoints/warp .*dvc fetch"):
        rollback(project.root, "HEAD~1")
    assert project.read("params.yaml") == snapshots["second"]["params.yaml"], "nothing was changed"
    with pytest.raises(HistoryError, match="not a commit"):
        rollback(project.root, "no-such-revision")
    with pytest.raises(HistoryError, match="no results for training stage 'gan'"):
        rollback(project.root, "HEAD", stage="gan")
