from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.flows.project import TINY_PARAMS, copy_project, environment, run, set_params


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    first_revision: str

    def run(self, *command: str, check: bool = True):
        return run(list(command), self.root, self.env, check=check)

    def commit(self, message: str) -> str:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)
        return self.run("git", "rev-parse", "HEAD").stdout.strip()


@pytest.fixture(scope="session")
def pipeline_project(tmp_path_factory, project_root) -> Project:
    """The project copied to a temporary git repo and run end to end once on tiny params (dvc repro)."""
    home = tmp_path_factory.mktemp("faceflow-e2e")
    root = home / "project"
    root.mkdir()
    copy_project(project_root, root)
    env = environment(home)
    set_params(root, TINY_PARAMS)
    project = Project(root, env, "")
    project.run("git", "init", "-q")
    project.run("faceflow", "sync")
    project.run("faceflow", "demo-data")
    project.commit("Project copy with tiny params")
    project.run("dvc", "repro")
    project.first_revision = project.commit("First pipeline run")
    return project
