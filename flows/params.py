"""params.yaml parsed once into frozen, validated models; each stage receives its slice.

An unknown or misspelled key anywhere is an error that names the key, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import re

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model.config import ModelConfig
from tasks.align import framing_fits, framing_scale
from tasks.curate import CurateOptions
from tasks.extract import FaceOptions, SideOptions
from tasks.mask_table import MaskOptions
from tasks.merge import MergeOptions
from tasks.train_options import RuntimeOptions, StageOptions
from tasks.xseg_train import XsegOptions

Side = Literal["src", "dst"]
SIDES: tuple[Side, ...] = ("src", "dst")
STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED_STAGE_NAMES = {"init", "xseg"}  # stages with their own checkpoints/<name> folder


class ParamsError(ValueError):
    """params.yaml is missing, not YAML, or has a wrong or unknown key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExtractParams(Section):
    faces: FaceOptions = Field(default_factory=FaceOptions)
    src: SideOptions = Field(default_factory=SideOptions)
    dst: SideOptions = Field(default_factory=SideOptions)

    @field_validator("dst")
    @classmethod
    def check_dst_every_frame(cls, dst: SideOptions) -> SideOptions:
        if not dst.samples_every_frame:
            raise ValueError("the dst is extracted at every frame (merge swaps each one): remove fps/every_n from extract.dst")
        return dst

    def side(self, side: Side) -> SideOptions:
        return self.src if side == "src" else self.dst


class CurateParams(Section):
    src: CurateOptions = Field(default_factory=CurateOptions)
    dst: CurateOptions = Field(default_factory=CurateOptions)


class InitFrom(Section):
    """Where the first training stage's weights come from instead of a fresh model (``train.init_from``).

    Either ``path``: a checkpoint directory (e.g. another project's checkpoints/sharpen), or
    ``revision`` + ``stage``: that stage's checkpoint at a git revision of ``repo`` (this project by
    default), fetched from the DVC cache.
    """

    path: str | None = None
    repo: str = "."
    revision: str | None = None
    stage: str | None = None

    @model_validator(mode="after")
    def check_one_source(self) -> InitFrom:
        if (self.path is None) == (self.revision is None):
            raise ValueError("give either path (a checkpoint directory) or revision + stage (a git revision's checkpoint)")
        if self.revision is not None and not self.stage:
            raise ValueError(f"revision {self.revision!r} needs the stage whose checkpoint to start from, e.g. stage: sharpen")
        if self.path is not None and (self.stage or self.repo != "."):
            raise ValueError("stage and repo go with revision; with path, point at the checkpoint directory itself")
        return self


class TrainParams(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    init_from: InitFrom | None = None  # start from a trained model (the "reuse my model" workflow); None = fresh weights
    pretrain_faceset: str | None = None  # folder holding the faces.lance that stages with pretrain: true train on
    runtime: RuntimeOptions = Field(default_factory=RuntimeOptions)  # how training runs here; not a DVC param
    stages: dict[str, StageOptions]

    @model_validator(mode="after")
    def check_pretrain_faceset(self) -> TrainParams:
        pretraining = [name for name, options in self.stages.items() if options.pretrain]
        if pretraining and self.pretrain_faceset is None:
            raise ValueError(f"train stage {pretraining[0]} has pretrain: true but train.pretrain_faceset is not set; "
                             "set it to a folder holding a faces.lance of many people's faces, or set pretrain: false")
        return self

    @field_validator("stages")
    @classmethod
    def check_stage_names(cls, stages: dict[str, StageOptions]) -> dict[str, StageOptions]:
        if not stages:
            raise ValueError("train.stages needs at least one stage, e.g. 'warp: {iterations: 1000}'")
        for name in stages:
            if not STAGE_NAME.match(name) or name in RESERVED_STAGE_NAMES:
                raise ValueError(
                    f"train stage name {name!r} must be lowercase letters, digits and _ (starting with a letter), not "
                    f"{' or '.join(repr(reserved) for reserved in sorted(RESERVED_STAGE_NAMES))}"
                )
        return stages

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages)

    def previous_stage(self, name: str) -> str:
        """The checkpoint a stage starts from: the stage before it, or the initial model."""
        names = self.stage_names
        index = names.index(name)
        return names[index - 1] if index else "init"

    @property
    def final_stage(self) -> str:
        return self.stage_names[-1]


class ExportParams(Section):
    name: str = "faceflow"  # exports/<name>.dfm
    fp16: bool = False  # float16 weights (half the file); the input and outputs stay float32

    @field_validator("name")
    @classmethod
    def check_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"export.name {name!r} may only hold letters, digits, '_', '.', '-'")
        return name


class ServeParams(Section):
    cron: str = "0 3 * * *"  # when the continue-training deployment runs (server time zone below)
    timezone: str = "UTC"
    continue_iterations: int = 1000  # iterations added to the last training stage per scheduled run
    commit: bool = True  # commit params.yaml + dvc.lock after each scheduled run (a new pipeline revision)


class Params(Section):
    extract: ExtractParams = Field(default_factory=ExtractParams)
    curate: CurateParams = Field(default_factory=CurateParams)
    mask: MaskOptions = Field(default_factory=MaskOptions)
    xseg: XsegOptions = Field(default_factory=XsegOptions)  # the segmentation network trained on your labels
    train: TrainParams
    merge: MergeOptions = Field(default_factory=MergeOptions)
    export: ExportParams = Field(default_factory=ExportParams)
    serve: ServeParams = Field(default_factory=ServeParams)

    @model_validator(mode="after")
    def check_model_fits_crops(self) -> Params:
        model, faces = self.train.model, self.extract.faces
        if not framing_fits(model.face_type, faces.face_type):
            raise ValueError(
                f"train.model.face_type {model.face_type} reaches beyond the extracted {faces.face_type} crops; set "
                f"extract.faces.face_type to {model.face_type} or wider (the faces are re-cropped from their stored "
                "landmarks, without detecting again)"
            )
        available = round(faces.size * framing_scale(model.face_type, faces.face_type))
        if model.resolution > available:
            raise ValueError(
                f"train.model.resolution ({model.resolution}) is larger than the {model.face_type} region of the extracted "
                f"crops ({available} px of extract.faces.size = {faces.size}); lower the resolution or extract larger crops"
            )
        return self


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source} is not valid:"]
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] in {"extra_forbidden", "unexpected_keyword_argument"}:
            lines.append(f"  {key}: unknown key (misspelled? see the README for the valid keys)")
        else:
            lines.append(f"  {key}: {problem['msg']} (got {problem.get('input')!r})")
    return "\n".join(lines)


def parse_params(data: object, source: str = "params.yaml") -> Params:
    """Validate already-loaded params data.

    Raises:
        ParamsError: naming every wrong or unknown key.
    """
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, source)) from None


def load_params(path: Path) -> Params:
    """Read and validate a params file.

    Raises:
        ParamsError: the file is missing, is not YAML, or has a wrong or unknown key.
    """
    if not path.is_file():
        raise ParamsError(f"{path} not found; run faceflow from the project folder (where params.yaml is)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    return parse_params(data, str(path))
