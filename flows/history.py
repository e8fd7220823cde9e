"""The pipeline's revisions: ``faceflow history`` lists them, ``faceflow rollback`` returns to one.

A revision is a commit that changed params.yaml or dvc.lock. Its record lives in git: params.yaml,
dvc.lock and metrics/ (the training metrics and loss curves are small DVC outputs with
``cache: false``, committed with the revision). So history reads every revision's settings and
metrics straight from git, with no DVC cache or remote needed, and it never parses an old
params.yaml with today's schema (a renamed key in an old revision is still shown).

Rolling back restores the revision's record and your decisions from git (params.yaml, dvc.yaml,
dvc.lock, metrics/ and the git-tracked files under data/: rejects, hand-placed landmarks, reference
photos, raw-data pointers), then checks out the large outputs (facesets, masks, checkpoints, renders)
from the DVC cache by the hashes in that dvc.lock. It is committed as a new revision ("Roll back to
...") so history stays linear and the rollback itself can be undone the same way.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table
from ruamel.yaml import YAML

from flows.params import parse_params
from flows.stages import metrics_file

PIPELINE_FILES = ("params.yaml", "dvc.yaml", "dvc.lock")
RECORD_FOLDERS = ("data", "metrics")  # git-tracked decisions and data pointers; committed metrics and plots
SUMMARY_METRICS = (("score", "score {:.3f}"), ("total", "loss {:.4g}"), ("iterations", "{:.0f} it"))


class HistoryError(RuntimeError):
    """A revision cannot be read or rolled back to; the message says why and what to do."""


@dataclass(frozen=True)
class ParamChange:
    """One dotted params key that differs from the previous revision (``None`` side: absent there)."""

    key: str
    old: object
    new: object

    def describe(self) -> str:
        return f"{self.key}: {format_value(self.old)} -> {format_value(self.new)}"


@dataclass(frozen=True)
class Revision:
    """One pipeline revision as ``faceflow history`` shows it.

    Attributes:
        commit, short, date, subject: The git commit.
        first: params.yaml did not exist before this commit (``changes`` is then empty).
        changes: Dotted params keys that differ from the commit's parent.
        metrics: Training stage name -> its metrics file at this commit (stages without one left out).
    """

    commit: str
    short: str
    date: str
    subject: str
    first: bool
    changes: list[ParamChange]
    metrics: dict[str, dict[str, float]]


def git(root: Path, *arguments: str) -> str:
    """Run git in ``root`` and return its output; HistoryError with git's message when it fails."""
    result = subprocess.run(["git", *arguments], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise HistoryError(f"`git {' '.join(arguments)}` failed in {root}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def read_at(root: Path, revision: str, path: str) -> str | None:
    """A file's text at a revision, or None when it did not exist there."""
    result = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=root, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def format_value(value: object) -> str:
    return "(none)" if value is None else json.dumps(value) if isinstance(value, (dict, list, str)) else str(value)


def flatten(document: object, prefix: str = "") -> dict[str, object]:
    """Nested params -> {"train.stages.warp.learning_rate": 0.0003, ...}; lists stay single values."""
    if not isinstance(document, dict) or (prefix and not document):
        return {prefix: document} if prefix else {}
    flat: dict[str, object] = {}
    for key, value in document.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def diff_params(before: object, after: object) -> list[ParamChange]:
    """Every dotted key whose value differs between two params documents, in ``after``'s order, removed keys last."""
    old, new = flatten(before), flatten(after)
    changed = [ParamChange(key, old.get(key), value) for key, value in new.items() if key not in old or old[key] != value]
    return changed + [ParamChange(key, value, None) for key, value in old.items() if key not in new]


def parse_yaml(text: str | None) -> dict:
    try:
        document = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return {}  # an unreadable old revision shows no params rather than hiding the rest of history
    return document if isinstance(document, dict) else {}


def training_stage_names(params: dict) -> list[str]:
    stages = params.get("train", {}).get("stages") if isinstance(params.get("train"), dict) else None
    return [str(name) for name in stages] if isinstance(stages, dict) else []


def read_revision(root: Path, commit: str, short: str, date: str, subject: str) -> Revision:
    params = parse_yaml(read_at(root, commit, "params.yaml"))
    previous_text = read_at(root, f"{commit}^", "params.yaml")
    changes = diff_params(parse_yaml(previous_text), params) if previous_text is not None else []
    metrics = {}
    for stage in training_stage_names(params):
        text = read_at(root, commit, metrics_file(stage))
        if text is not None:
            try:
                metrics[stage] = json.loads(text)
            except json.JSONDecodeError:
                metrics[stage] = {}  # shown as "-": one damaged file does not hide the rest
    return Revision(commit, short, date, subject, previous_text is None, changes, metrics)


def list_history(root: Path, limit: int = 20) -> list[Revision]:
    """The newest ``limit`` commits that changed params.yaml or dvc.lock, newest first.

    Raises:
        HistoryError: ``root`` is not a git repository.
    """
    log = git(root, "log", f"--max-count={limit}", "--date=format:%Y-%m-%d %H:%M", "--format=%H%x1f%h%x1f%cd%x1f%s",
              "--", "params.yaml", "dvc.lock")
    return [read_revision(root, *line.split("\x1f", 3)) for line in log.splitlines() if line]


def summarize_metrics(metrics: dict[str, float], separator: str = "  ") -> str:
    parts = [template.format(metrics[key]) for key, template in SUMMARY_METRICS if isinstance(metrics.get(key), (int, float))]
    return separator.join(parts) or "-"


def describe_changes(revision: Revision) -> list[str]:
    if revision.first:
        return ["first revision of params.yaml"]
    return [change.describe() for change in revision.changes] or ["no params change"]


def history_table(revisions: list[Revision]) -> Table:
    """A rich table: revision, what changed, then one column of metrics per training stage."""
    stages = list(dict.fromkeys(stage for revision in revisions for stage in revision.metrics))
    table = Table(show_lines=True)
    table.add_column("revision", no_wrap=True)
    table.add_column("change")
    for stage in stages:
        table.add_column(f"train@{stage}", no_wrap=True)
    for revision in revisions:
        change = revision.subject + "".join(f"\n[dim]{line}[/]" for line in describe_changes(revision))
        cells = [summarize_metrics(revision.metrics[stage], "\n") if stage in revision.metrics else "-" for stage in stages]
        table.add_row(f"[bold]{revision.short}[/]\n{revision.date}", change, *cells)
    return table


def history_text(revisions: list[Revision]) -> str:
    """The same as plain text, one block per revision (for pipes and files)."""
    blocks = []
    for revision in revisions:
        lines = [f"{revision.short}  {revision.date}  {revision.subject}"]
        lines += [f"    {line}" for line in describe_changes(revision)]
        lines += [f"    train@{stage}: {summarize_metrics(metrics)}" for stage, metrics in revision.metrics.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else "no revision has changed params.yaml or dvc.lock yet\n"


def print_history(revisions: list[Revision], console: Console) -> None:
    """A table on a terminal, plain text otherwise."""
    if console.is_terminal:
        console.print(history_table(revisions))
    else:
        console.file.write(history_text(revisions))


@dataclass(frozen=True)
class RollbackResult:
    """What a rollback did.

    Attributes:
        revision, short: The commit rolled back to.
        restored_stages: DVC stages whose outputs now come from that revision.
        changed_files: Git-tracked files the rollback changed.
        commit: The "Roll back to ..." commit, or None (nothing changed, or ``commit=False``).
        stale_stages: Stages DVC still sees as changed; ``faceflow run`` will run them.
    """

    revision: str
    short: str
    restored_stages: list[str]
    changed_files: list[str]
    commit: str | None
    stale_stages: list[str]


def resolve_revision(root: Path, revision: str) -> str:
    result = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"], cwd=root,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise HistoryError(f"{revision!r} is not a commit in {root}; `faceflow history` lists the pipeline's revisions")
    return result.stdout.strip()


def known_paths(root: Path, revision: str, candidates: list[str]) -> list[str]:
    """The candidates that exist at ``revision`` or in the index (what git restore and commit accept)."""
    return [path for path in candidates
            if git(root, "ls-tree", "-r", "--name-only", revision, "--", path).strip()
            or git(root, "ls-files", "--", path).strip()]


def refuse_if_dirty(root: Path, paths: list[str]) -> None:
    status = git(root, "status", "--porcelain", "--untracked-files=all", "--", *paths).splitlines()
    if status:
        files = ", ".join(line[3:] for line in status[:5]) + (f" and {len(status) - 5} more" if len(status) > 5 else "")
        raise HistoryError(f"uncommitted changes to {files} in {root}: commit them (git commit) or discard them "
                           "(git restore) first, so that rolling back loses nothing")


def upstream_stages(lock_stages: dict, target: str) -> list[str]:
    """``target`` and every stage whose outputs it reads, directly or not, by the paths in dvc.lock (lock order)."""
    outputs = {name: [out["path"] for out in entry.get("outs", [])] for name, entry in lock_stages.items()}

    def feeds(dependency: str, output: str) -> bool:
        return dependency == output or dependency.startswith(output + "/") or output.startswith(dependency + "/")

    found, pending = {target}, [target]
    while pending:
        for dependency in lock_stages[pending.pop()].get("deps", []):
            for name, paths in outputs.items():
                if name not in found and any(feeds(dependency["path"], output) for output in paths):
                    found.add(name)
                    pending.append(name)
    return [name for name in lock_stages if name in found]


def cached_outputs(root: Path, revision: str, lock_stages: dict, stages: list[str]) -> list[dict]:
    """The DVC-cached outputs to check out: the stages' outs not committed to git, and every data/*.dvc file's outs."""
    tracked = set(git(root, "ls-tree", "-r", "--name-only", revision).splitlines())
    outputs = [out for name in stages for out in lock_stages[name].get("outs", []) if out["path"] not in tracked]
    for pointer in sorted(path for path in tracked if path.startswith("data/") and path.endswith(".dvc")):
        folder = str(Path(pointer).parent)
        for out in parse_yaml(read_at(root, revision, pointer)).get("outs", []):
            outputs.append({**out, "path": f"{folder}/{out['path']}"})
    return outputs


def find_missing_cache(root: Path, outputs: list[dict]) -> list[str]:
    """Paths of outputs (directories: any of their files) whose objects the local DVC cache lacks."""
    from dvc.repo import Repo

    missing = []
    with Repo(str(root)) as repo:
        for out in outputs:
            cache = repo.cache.repo if out.get("hash") == "md5" else repo.cache.legacy  # no "hash" key: DVC 2 lock
            oid = out.get("md5")
            if not oid or not cache.exists(oid):
                missing.append(out["path"])
            elif oid.endswith(".dir"):
                entries = json.loads(Path(cache.oid_to_path(oid)).read_text())
                if not all(cache.exists(entry["md5"]) for entry in entries):
                    missing.append(out["path"])
    return missing


def assign_params(document: dict, dotted_key: str, value: object) -> None:
    """Set a dotted key in a round-trip YAML document, keeping the comments of what does not change."""
    *parents, last = dotted_key.split(".")
    node = document
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = merge_value(node.get(last), value)


def merge_value(current: object, value: object) -> object:
    if isinstance(current, dict) and isinstance(value, dict):
        for key in [key for key in current if key not in value]:
            del current[key]
        for key, item in value.items():
            current[key] = merge_value(current.get(key), item)
        return current
    return value


def restore_stage_record(root: Path, revision_lock: dict, stages: list[str], train_stage: str) -> None:
    """Bring the stages' params values and dvc.lock entries back from the revision; the rest stays as it is."""
    round_trip = YAML()
    document = round_trip.load((root / "params.yaml").read_text())
    if train_stage not in training_stage_names(document):
        raise HistoryError(f"params.yaml has no training stage {train_stage!r} (train.stages: "
                           f"{', '.join(training_stage_names(document))}); roll back the whole revision instead")
    for name in stages:
        for key, value in revision_lock["stages"][name].get("params", {}).get("params.yaml", {}).items():
            assign_params(document, key, value)
    parse_params(json.loads(json.dumps(document)), str(root / "params.yaml"))  # never write an invalid file
    text = io.StringIO()
    round_trip.dump(document, text)
    (root / "params.yaml").write_text(text.getvalue())
    lock_path = root / "dvc.lock"
    lock = parse_yaml(lock_path.read_text() if lock_path.exists() else None) or {"schema": "2.0"}
    lock.setdefault("stages", {}).update({name: revision_lock["stages"][name] for name in stages})
    lock_path.write_text(yaml.safe_dump(lock, sort_keys=False))


def check_out_outputs(root: Path, short: str, targets: list[str] | None) -> list[str]:
    """``dvc checkout`` the targets (None: everything), then return the stages DVC still sees as changed."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:  # DVC resolves targets and names stages from the cwd
        try:
            repo.checkout(targets=targets)
        except DvcException as error:
            raise HistoryError(f"`dvc checkout` failed after params.yaml and dvc.lock were restored from {short}: {error}; "
                               "fix the cause and run `dvc checkout` to finish the rollback") from error
        return sorted(repo.status())


def rollback(root: Path, revision: str, stage: str | None = None, commit: bool = True) -> RollbackResult:
    """Return the project to a revision's model: its record and decisions from git, its outputs from the DVC cache.

    Args:
        root: The project (a git repository with DVC).
        revision: Any git revision: a commit id, ``HEAD~2``, a tag.
        stage: Roll back only training stage ``train@<stage>`` and the stages it reads from (extraction,
            curation, masks, earlier training stages); later stages keep their current params and run
            again, from the restored checkpoint, on the next ``faceflow run``.
        commit: Commit the rollback as a new revision; otherwise leave the changes uncommitted.

    Returns:
        What was restored, the new commit and the stages that are still stale.

    Raises:
        HistoryError: An unknown revision or stage, uncommitted changes to the pipeline files, or
            cache objects missing (nothing is changed in these cases); a failed checkout.
        ParamsError: The revision's values do not fit today's params schema (``stage`` only).
    """
    root = root.resolve()
    commit_id = resolve_revision(root, revision)
    short = git(root, "rev-parse", "--short", commit_id).strip()
    revision_lock = parse_yaml(read_at(root, commit_id, "dvc.lock"))
    if not revision_lock.get("stages"):
        raise HistoryError(f"revision {short} has no dvc.lock: the pipeline had not run (or its results were not "
                           "committed) there; `faceflow history` lists revisions with results")
    refuse_if_dirty(root, [*PIPELINE_FILES, *RECORD_FOLDERS])
    if stage is None:
        stages = list(revision_lock["stages"])
    elif f"train@{stage}" in revision_lock["stages"]:
        stages = upstream_stages(revision_lock["stages"], f"train@{stage}")
    else:
        trained = [name.removeprefix("train@") for name in revision_lock["stages"] if name.startswith("train@")]
        raise HistoryError(f"revision {short} has no results for training stage {stage!r} (it has: {', '.join(trained)})")
    missing = find_missing_cache(root, cached_outputs(root, commit_id, revision_lock["stages"], stages))
    if missing:
        raise HistoryError(f"the DVC cache has no copy of {', '.join(missing[:5])} as of {short}: fetch it with "
                           f"`dvc fetch --all-commits` (from your DVC remote), then roll back again; nothing was changed")

    if stage is None:
        restored = known_paths(root, commit_id, [*PIPELINE_FILES, *RECORD_FOLDERS])
        git(root, "restore", f"--source={commit_id}", "--staged", "--worktree", "--", *restored)
        targets = None
    else:
        restore_stage_record(root, revision_lock, stages, stage)
        git(root, "add", "--", "params.yaml", "dvc.lock")
        committed_outputs = [out["path"] for name in stages for out in revision_lock["stages"][name].get("outs", [])]
        from_git = known_paths(root, commit_id, ["data", *committed_outputs])
        if from_git:
            git(root, "restore", f"--source={commit_id}", "--staged", "--worktree", "--", *from_git)
        pointers = [path for path in git(root, "ls-files", "--", "data").splitlines() if path.endswith(".dvc")]
        targets = stages + pointers
    stale = check_out_outputs(root, short, targets)

    changed = git(root, "diff", "--cached", "--name-only", "HEAD", "--", *PIPELINE_FILES, *RECORD_FOLDERS).splitlines()
    new_commit = None
    if commit and changed:
        subject = git(root, "log", "-1", "--format=%s", commit_id).strip()
        scope = f"train@{stage} (and the stages before it)" if stage else "the pipeline"
        git(root, "commit", "-q", "-m", f"Roll back {scope} to {short}: {subject}", "--", *changed)
        new_commit = git(root, "rev-parse", "HEAD").strip()
    return RollbackResult(commit_id, short, stages, changed, new_commit, stale)
