"""Provenance of renders: what made them, so every output can be traced and labelled as synthetic.

A labelled render carries three labels, each readable without the others:
- a C2PA manifest (tasks.c2pa_signing) declaring it AI-generated, signed by the project;
- an invisible watermark in its frames (tasks.watermark): faceflow's magic plus a revision tag;
- a sidecar ``<render>.provenance.json``: the git commit, dvc.lock hash and params that made it,
  and the SHA-256 of the final (signed) file.
``verify_file`` reads all three back (``faceflow verify``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import av
import cv2
import numpy as np

from tasks.c2pa_signing import CA_FILE, PROVENANCE_DIR, SigningError, read_manifest
from tasks.watermark import MAGIC_BITS, encode_payload
from tasks.watermark_reader import read_video_watermark, soft_bits, vote

logger = logging.getLogger(__name__)

SYNTHETIC_LABEL = "AI-generated synthetic media (face swap) made with faceflow"
SIDECAR_SUFFIX = ".provenance.json"


def git_revision(root: Path) -> dict:
    """The project's git commit and whether the work tree had uncommitted changes."""
    def run(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = run("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(run("status", "--porcelain", "--untracked-files=no")) if commit else None}


def file_sha256(path: Path) -> str | None:
    """SHA-256 of a file; of a folder (a PNG render), of its sorted "name digest" lines; None if missing."""
    path = Path(path)
    if path.is_dir():
        lines = "".join(f"{item.name} {file_sha256(item)}\n" for item in sorted(path.iterdir()) if item.is_file())
        return hashlib.sha256(lines.encode()).hexdigest()
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def pipeline_revision(root: Path, params: dict) -> dict:
    """Git commit, dvc.lock hash and the params used: enough to reproduce an output."""
    return {
        "git": git_revision(root),
        "dvc_lock_sha256": file_sha256(root / "dvc.lock"),
        "params": params,
    }


def revision_summary(revision: dict) -> dict:
    """The short form of a revision written into the C2PA manifest (the sidecar holds the full params)."""
    params = json.dumps(revision.get("params", {}), sort_keys=True, default=str).encode()
    summary = {
        "label": SYNTHETIC_LABEL,
        "git_commit": revision["git"].get("commit"),
        "git_dirty": revision["git"].get("dirty"),
        "dvc_lock_sha256": revision.get("dvc_lock_sha256"),
        "params_sha256": hashlib.sha256(params).hexdigest(),
    }
    return {**summary, "watermark_revision_tag": watermark_tag(summary)}


def watermark_tag(summary: dict) -> int:
    """8 bits of the revision (commit, dvc.lock and params hashes) carried by the watermark: a consistency
    check against the sidecar (1 in 256 revisions share a tag), not an identifier."""
    text = f"{summary.get('git_commit')}:{summary.get('dvc_lock_sha256')}:{summary.get('params_sha256')}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:2], 16)


def container_metadata(revision: dict) -> dict[str, str]:
    """Metadata tags written into a rendered video's container."""
    return {
        "comment": SYNTHETIC_LABEL,
        "description": SYNTHETIC_LABEL,
        "encoder_pipeline": f"faceflow git:{(revision['git'].get('commit') or 'unknown')[:12]}",
    }


def write_sidecar(output: Path, revision: dict, extra: dict) -> Path:
    """Write ``<output>.provenance.json`` beside a render (a file, or a folder of PNG frames); returns its path.

    Write it last: it records the SHA-256 of ``output`` as it is now.
    """
    record = {
        "label": SYNTHETIC_LABEL,
        "synthetic": True,
        "file": output.name,
        "file_sha256": file_sha256(output),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "revision": revision,
        "revision_summary": revision_summary(revision),
        **extra,
    }
    path = output.with_name(output.name + SIDECAR_SUFFIX)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(temporary, path)
    return path


class ProvenanceError(ValueError):
    """A file cannot be checked at all (missing, or neither a video nor an image); the message names it."""


LabelStatus = Literal["found", "missing", "invalid"]
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


@dataclass(frozen=True)
class LabelCheck:
    name: str  # "C2PA manifest", "watermark" or "sidecar"
    status: LabelStatus
    details: dict[str, str]


@dataclass(frozen=True)
class VerifyReport:
    path: Path
    checks: tuple[LabelCheck, ...]

    @property
    def all_found(self) -> bool:
        """True when all three labels are there and valid."""
        return all(check.status == "found" for check in self.checks)


def find_trust_anchor(path: Path, root: Path | None) -> Path | None:
    """The project CA (``.faceflow/provenance/ca.pem``) of ``root``, or of the first folder above ``path`` holding one."""
    for folder in [root] if root is not None else Path(path).resolve().parents:
        candidate = Path(folder) / PROVENANCE_DIR / CA_FILE
        if candidate.is_file():
            return candidate
    return None


def check_sidecar(path: Path) -> tuple[LabelCheck, dict]:
    """The sidecar label and the summary it records ({} when there is none)."""
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        return LabelCheck("sidecar", "missing", {"expected at": str(sidecar)}), {}
    try:
        record = json.loads(sidecar.read_text())
        summary = record.get("revision_summary") or revision_summary(record["revision"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return LabelCheck("sidecar", "invalid", {"file": str(sidecar), "problem": f"unreadable ({error})"}), {}
    commit = (summary.get("git_commit") or "unknown")[:12] + (" (uncommitted changes)" if summary.get("git_dirty") else "")
    details = {"file": sidecar.name, "created": str(record.get("created")),
               "revision": f"git {commit}, dvc.lock {(summary.get('dvc_lock_sha256') or 'none')[:12]}, "
                           f"params {(summary.get('params_sha256') or 'unknown')[:12]}"}
    problems = []
    if record.get("synthetic") is not True:
        problems.append("it does not say the file is synthetic")
    if record.get("file_sha256") != file_sha256(path):
        problems.append("the file's SHA-256 differs from the recorded one: it changed after it was rendered")
    if problems:
        details["problem"] = "; ".join(problems)
    return LabelCheck("sidecar", "invalid" if problems else "found", details), summary


def check_watermark(path: Path, media: list[Path] | None, summary: dict) -> LabelCheck:
    """The watermark label; ``media`` lists the image files to read (None: ``path`` is a video)."""
    if media is None:
        reading = read_video_watermark(path)
    else:
        reading = vote(np.concatenate([soft_bits_of_image(image) for image in media]))
    details = {"magic bits": f"{reading.magic_bits_matched}/{MAGIC_BITS}", "confidence": f"{reading.confidence:.2f}",
               "frames read": str(reading.frames)}
    if not reading.found:
        return LabelCheck("watermark", "missing", details)
    details |= {"payload": f"0x{int(''.join(map(str, reading.payload)), 2):08X} (faceflow synthetic media, revision tag "
                           f"{reading.revision_tag})", "frame agreement": f"{reading.frame_agreement:.2f}"}
    if summary:
        expected_tag = summary.get("watermark_revision_tag", watermark_tag(summary))
        details["bit accuracy"] = f"{reading.bit_accuracy(encode_payload(expected_tag)):.2f} (against the sidecar's revision)"
        if reading.revision_tag != expected_tag:
            details["problem"] = f"revision tag {reading.revision_tag} differs from the sidecar's ({expected_tag})"
            return LabelCheck("watermark", "invalid", details)
    return LabelCheck("watermark", "found", details)


def soft_bits_of_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ProvenanceError(f"{path}: cannot be decoded as an image; is it complete?")
    return soft_bits(image)[None, :]


def check_manifest(files: list[Path], anchor: Path | None) -> LabelCheck:
    """The C2PA label over ``files`` (one file, or sampled PNG frames: every one must carry it)."""
    reports = [read_manifest(file, anchor) for file in files]
    statuses = {report.status for report in reports}
    status: LabelStatus = statuses.pop() if len(statuses) == 1 else "invalid"
    first = next((report for report in reports if report.status != "missing"), reports[0])
    details = {}
    if first.status != "missing":
        trust = "trusted (this project's certificate)" if first.trusted else "not in a trust list here"
        details = {"signer": f"{first.signer}; {trust}",
                   "claim generator": first.claim_generator, "digital source type": first.digital_source_type or "none"}
    if len(files) > 1:
        details["frames checked"] = f"{sum(report.status == 'found' for report in reports)}/{len(files)} labelled"
    problems = [problem for report in reports for problem in report.problems]
    if problems:
        details["problem"] = problems[0]
    return LabelCheck("C2PA manifest", status, details)


def verify_file(path: Path, root: Path | None = None, sample_frames: int = 24) -> VerifyReport:
    """Read the three synthetic-media labels of a render.

    Args:
        path: a video, an image, or a folder of PNG frames (a PNG render).
        root: the project whose signing CA counts as trusted; None looks above ``path``.
        sample_frames: frames (or PNG files) read for the watermark, spread over the render.

    Returns:
        The report: one check per label, each found, missing or invalid with its details.

    Raises:
        ProvenanceError: ``path`` does not exist, or is neither a readable video nor an image.
    """
    path = Path(path)
    if path.is_dir():
        frames = sorted(item for item in path.iterdir() if item.suffix.lower() in IMAGE_SUFFIXES)
        if not frames:
            raise ProvenanceError(f"{path}: a folder without PNG or JPEG frames; give a render file or a PNG render folder")
        media = [frames[round(index * (len(frames) - 1) / max(sample_frames - 1, 1))]
                 for index in range(min(sample_frames, len(frames)))]
    elif not path.is_file():
        raise ProvenanceError(f"{path}: no such file; check the path")
    else:
        media = [path] if path.suffix.lower() in IMAGE_SUFFIXES else None
        if media is None:
            try:
                with av.open(str(path)) as container:
                    if not container.streams.video:
                        raise ProvenanceError(f"{path}: holds no video stream; give a rendered video or image")
            except av.FFmpegError as error:
                raise ProvenanceError(f"{path}: not a video or image that can be read ({error})") from None
    sidecar, summary = check_sidecar(path)
    try:
        watermark = check_watermark(path, media, summary)
    except ProvenanceError:
        raise
    except (av.FFmpegError, ValueError) as error:
        raise ProvenanceError(f"{path}: its frames cannot be decoded ({error})") from None
    try:
        manifest = check_manifest(media or [path], find_trust_anchor(path, root))
    except SigningError as error:
        manifest = LabelCheck("C2PA manifest", "missing", {"problem": str(error)})
    return VerifyReport(path, (manifest, watermark, sidecar))
