"""A DeepFaceLive .dfm opened for live swapping with ONNX Runtime (CUDA first when it is offered).

The file is checked against the .dfm contract first (tasks.dfm_check), so a file with other tensor
names, another layout or a fixed batch is refused with the tensor named, before any frame is read.
The framing of the crops comes from the file's own record (faceflow writes it at export) or, for
files from DeepFaceLab that carry none, from the face_type option.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import onnxruntime

from tasks.align import FaceType
from tasks.dfm_check import DEFAULT_FACE_TYPE, FACE_TYPE_METADATA_KEY, check_dfm_graph, load_onnx, run_session
from tasks.live_options import Device, LiveError

logger = logging.getLogger(__name__)

FACE_TYPES: tuple[str, ...] = get_args(FaceType)
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class SwapOutput:
    """The model's answer for N aligned crops, all float32 in [0, 1] at the model's resolution R."""

    faces: np.ndarray  # (N, R, R, 3) BGR, the crops painted as the src identity
    masks: np.ndarray  # (N, R, R) the painted face's mask
    dst_masks: np.ndarray  # (N, R, R) the dst face's own mask


def choose_providers(device: Device, available: list[str]) -> list[str]:
    """ONNX Runtime providers in order of preference for a device choice.

    Raises:
        LiveError: cuda was asked for but this onnxruntime build does not offer it.
    """
    if device == "cuda" and CUDA_PROVIDER not in available:
        raise LiveError(f"--device cuda: this onnxruntime offers {available}, not {CUDA_PROVIDER}; install "
                        "onnxruntime-gpu with a matching CUDA, or use --device auto")
    if device != "cpu" and CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def choose_face_type(recorded: str | None, option: FaceType | None, path: Path) -> FaceType:
    """The option when given, else the file's record, else DEFAULT_FACE_TYPE (with a warning)."""
    if option is not None:
        if recorded in FACE_TYPES and recorded != option:
            logger.warning("%s records face type %s; using %s as asked", path, recorded, option)
        return option
    if recorded in FACE_TYPES:
        return recorded  # type: ignore[return-value]
    logger.warning("%s does not record the face type it was trained on (DeepFaceLab exports do not); assuming %s: "
                   "pass --face-type if the swapped face sits wrong", path, DEFAULT_FACE_TYPE)
    return DEFAULT_FACE_TYPE


class DfmSwapModel:
    """One .dfm file in an ONNX Runtime session: aligned uint8 crops in, swapped faces and masks out."""

    def __init__(self, path: Path, face_type: FaceType | None = None, device: Device = "auto",
                 threads: int = 0) -> None:
        """Check and load the file (a second or two for a SAEHD-sized model).

        Args:
            path: the .dfm file.
            face_type: the framing the model was trained on; None reads it from the file.
            device: auto (CUDA when offered), cpu or cuda.
            threads: ONNX Runtime intra-op threads; 0 lets it choose.

        Raises:
            tasks.dfm_check.DfmError: the file is missing, unreadable or breaks the .dfm contract
                (the message names the tensor).
            LiveError: cuda asked for but not offered, or ONNX Runtime cannot load the file.
        """
        self.path = Path(path)
        model_proto = load_onnx(self.path)
        self.resolution = check_dfm_graph(model_proto, self.path)
        self.metadata = {entry.key: entry.value for entry in model_proto.metadata_props}
        self.face_type = choose_face_type(self.metadata.get(FACE_TYPE_METADATA_KEY), face_type, self.path)
        del model_proto  # the session keeps its own copy of the weights
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL  # one small graph: no use for inter-op
        options.log_severity_level = 3  # errors only
        providers = choose_providers(device, onnxruntime.get_available_providers())
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=providers)
        except Exception as error:  # ONNX Runtime raises its own untyped errors
            raise LiveError(f"ONNX Runtime cannot load {self.path} with {providers} ({error}); check it with "
                            f"`faceflow dfm check {self.path}`") from error
        self.providers = self.session.get_providers()
        logger.info("opened %s: %d px %s faces, %s", self.path, self.resolution, self.face_type, self.providers[0])

    def swap(self, crops: np.ndarray) -> SwapOutput:
        """Swap a batch of aligned crops.

        Args:
            crops: (N, R, R, 3) uint8 BGR crops of the model's face type.

        Returns:
            The swapped faces and both masks.

        Raises:
            tasks.dfm_check.DfmError: ONNX Runtime fails to run the file.
        """
        faces = crops.astype(np.float32) * np.float32(1 / 255)  # (N, R, R, 3) in [0, 1], as DeepFaceLive feeds
        dst_masks, celeb_faces, celeb_masks = run_session(self.session, faces, self.path)
        return SwapOutput(celeb_faces, celeb_masks[..., 0], dst_masks[..., 0])
