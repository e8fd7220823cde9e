"""Imports point one way: model <- tasks <- flows."""

from __future__ import annotations

import ast

import pytest

FORBIDDEN = {"model": {"tasks", "flows"}, "tasks": {"flows"}}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(project_root, layer):
    offenders = []
    for path in sorted((project_root / layer).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(project_root)} imports {name}" for name in names if name.split(".")[0] in FORBIDDEN[layer]]
    assert not offenders, offenders


def test_no_pickle_loading(project_root):
    offenders = []
    for layer in ("model", "tasks", "flows"):
        for path in (project_root / layer).rglob("*.py"):
            text = path.read_text()
            if "pickle.load" in text or ("torch.load(" in text and "weights_only=True" not in text):
                offenders.append(str(path))
    assert not offenders, offenders
