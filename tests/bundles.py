"""Test helper: MONAI model-zoo bundles with seeded weights, and small synthetic inputs for them.

Example::

    folder = zoo_bundle("spleen_ct_segmentation", tmp_path, seed=0)
    volume = synthetic_volume(orientation="coronal", head_first=False)
    write_nifti(volume, tmp_path / "ct.nii.gz")     # what MONAI's own runner reads
    grid = volume_grid(volume)                      # what the node's runner reads
    manifest = site_manifest("spleen", folder, Task.SEGMENTATION, SPLEEN_LABELS)

The bundles under ``tests/data/model-zoo`` are unchanged copies of the zoo's: they are copied
to a temporary folder, and only ``models/model.pt`` (the bundle's own ``network_def``,
initialised with ``torch.manual_seed(seed)``) is added there.
"""

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import torch
from monai.bundle.config_parser import ConfigParser
from PIL import Image

from cad_node.domain.imaging import ImageVolume, slice_affine
from cad_node.domain.results import ResultGrid, SourceImage
from cad_node.models.manifest import SITE_FAMILY, Manifest, Task, WeightsFormat, sha256_of

ZOO = Path(__file__).parent / "data" / "model-zoo"

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""DICOM patient coordinates (LPS) to NIfTI/MONAI world coordinates (RAS), and back."""

_NOT_PRETRAINED = {"breast_density_classification": "pretrained"}
"""Bundles whose ``network_def`` downloads ImageNet weights unless this argument is false."""


def bundle_config(folder: Path) -> Path:
    """The bundle's inference config (``configs/inference.json`` or ``.yaml``)."""
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        path = folder / "configs" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{folder}: no configs/inference.json or .yaml")


def bundle_network(folder: Path, seed: int = 0) -> torch.nn.Module:
    """The bundle's own ``network_def``, built by MONAI's ConfigParser, seeded initialisation."""
    parser = ConfigParser()
    parser.read_config(bundle_config(folder))
    parser["bundle_root"] = str(folder)
    pretrained = _NOT_PRETRAINED.get(folder.name)
    if pretrained is not None:
        parser[f"network_def#{pretrained}"] = False  # offline: seeded weights replace them anyway
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def", instantiate=True)
    if not isinstance(network, torch.nn.Module):
        raise TypeError(f"{folder.name}: network_def is a {type(network).__name__}")
    return network.eval()


def zoo_bundle(
    name: str,
    tmp_path: Path,
    seed: int = 0,
    tweak: Callable[[torch.nn.Module], None] | None = None,
) -> Path:
    """A copy of zoo bundle ``name`` under ``tmp_path`` with ``models/model.pt`` written.

    The weights are the bundle's ``network_def`` initialised after ``torch.manual_seed(seed)``,
    then changed by ``tweak(network)`` when given; saved as a plain ``state_dict`` (what
    MONAI's CheckpointLoader and the zoo's own ``model.pt`` files hold).
    """
    source = ZOO / name
    if not source.is_dir():
        raise FileNotFoundError(f"no zoo bundle {name} under {ZOO}")
    folder = tmp_path / name
    shutil.copytree(source, folder)
    network = bundle_network(folder, seed)
    if tweak is not None:
        with torch.no_grad():
            tweak(network)
    (folder / "models").mkdir(exist_ok=True)
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def retinanet_scores(logit: float) -> Callable[[torch.nn.Module], None]:
    """A tweak for a MONAI RetinaNet: its classification head's bias set to ``logit``.

    RetinaNet's prior makes every score about 0.01, below any threshold; a bias near 0 lifts
    a handful of the seeded network's boxes above 0.5 without changing where they are.
    """

    def tweak(network: torch.nn.Module) -> None:
        head = network.get_submodule("classification_head.cls_logits")
        bias = getattr(head, "bias", None)
        if not isinstance(bias, torch.Tensor):
            raise TypeError("the RetinaNet's classification head has no bias")
        bias.fill_(logit)

    return tweak


def _last_layer(network: torch.nn.Module) -> torch.nn.Module:
    layers = [
        m
        for m in network.modules()
        if isinstance(m, torch.nn.Linear | torch.nn.modules.conv._ConvNd)
    ]
    if not layers:
        raise TypeError(f"{type(network).__name__} has no linear or convolution layer")
    return layers[-1]


def shift_output_bias(channel: int, delta: float) -> Callable[[torch.nn.Module], None]:
    """A tweak: ``delta`` added to output ``channel``'s bias in the network's last layer.

    A seeded segmentation network tends to call nearly every voxel one label; a shift makes
    both labels common, so a mask comparison has boundaries to disagree on.
    """

    def tweak(network: torch.nn.Module) -> None:
        bias = _last_layer(network).bias
        if not isinstance(bias, torch.Tensor):
            raise TypeError("the last layer has no bias")
        bias[channel] += delta

    return tweak


def scale_output(factor: float) -> Callable[[torch.nn.Module], None]:
    """A tweak: the last layer's weights and bias times ``factor`` (logits ``factor`` times
    larger), so class probabilities are neither all equal nor saturated at 0 or 1."""

    def tweak(network: torch.nn.Module) -> None:
        layer = _last_layer(network)
        for parameter in (layer.weight, layer.bias):
            if isinstance(parameter, torch.Tensor):
                parameter.mul_(factor)

    return tweak


# --- the manifest the node's runner gets ---


def label_entry(
    label: str, code: str, meaning: str, threshold: float | None = None
) -> dict[str, Any]:
    """A LABELS.yaml entry (SNOMED CT concept, category "Anatomical structure")."""
    entry: dict[str, Any] = {
        "label": label,
        "code": code,
        "scheme": "SCT",
        "meaning": meaning,
        "category": {"code": "123037004", "scheme": "SCT", "meaning": "Anatomical structure"},
    }
    if threshold is not None:
        entry["threshold"] = threshold
    return entry


SPLEEN_LABELS = {1: label_entry("spleen", "78961009", "Spleen")}
"""The LABELS.yaml of spleen_ct_segmentation (label 0 is the background)."""


def site_manifest(
    name: str,
    folder: Path,
    task: Task,
    labels: Mapping[int, dict[str, Any]],
    *,
    input_kind: str = "volume",
    modality: str = "CT",
) -> Manifest:
    """The manifest ``cad-node models add`` writes for the bundle in ``folder`` (DESIGN16)."""
    files = {
        path.relative_to(folder).as_posix(): sha256_of(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }
    config = bundle_config(folder).relative_to(folder).as_posix()
    return Manifest(
        name=name,
        version="1",
        family=SITE_FAMILY,
        modality=modality,
        weights_file="models/model.pt",
        sha256=files["models/model.pt"],
        operating_threshold=0.5,
        intended_use="test bundle with seeded weights",
        format=WeightsFormat.MONAI_BUNDLE,
        bundle_config=config,
        task=task,
        labels={str(value): dict(entry) for value, entry in labels.items()},
        files=files,
        input_kind=input_kind,
    )


# --- synthetic series ---

_HEAD_FIRST_COSINES = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}
_ORIENTATIONS = (*_HEAD_FIRST_COSINES, "oblique")
_FEET_FIRST = np.diag([-1.0, 1.0, -1.0])
"""A supine patient entering feet first: left-right and head-feet turn over (PS3.3 C.7.3.1)."""


def _rotation(degrees_x: float, degrees_z: float) -> npt.NDArray[np.float64]:
    ax, az = np.radians(degrees_x), np.radians(degrees_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ rx, dtype=np.float64)


def orientation_cosines(orientation: str, head_first: bool = True) -> npt.NDArray[np.float64]:
    """ImageOrientationPatient (row cosines, then column cosines) of a named orientation.

    ``orientation`` is "axial", "coronal", "sagittal" or "oblique" (axial tilted 20 degrees
    about x, then turned 15 degrees about z).
    """
    if orientation == "oblique":
        row, column = _HEAD_FIRST_COSINES["axial"]
        turn = _rotation(20.0, 15.0)
        cosines = np.concatenate([turn @ np.array(row), turn @ np.array(column)])
    else:
        row, column = _HEAD_FIRST_COSINES[orientation]
        cosines = np.array([*row, *column], dtype=np.float64)
    if not head_first:
        cosines = np.concatenate([_FEET_FIRST @ cosines[:3], _FEET_FIRST @ cosines[3:]])
    return cosines


def synthetic_volume(
    shape: tuple[int, int, int] = (24, 48, 48),
    spacing_mm: tuple[float, float, float] = (2.0, 0.8, 0.8),
    *,
    orientation: str = "axial",
    head_first: bool = True,
    origin: tuple[float, float, float] = (-20.0, -30.0, 40.0),
    blob_at: tuple[float, float, float] = (0.55, 0.4, 0.6),
    blob_radius_mm: float = 9.0,
    seed: int = 0,
    background: float = -80.0,
    blob: float = 120.0,
) -> ImageVolume:
    """A CT-like volume (HU) with one bright ball and some seeded noise.

    ``blob_at`` places the ball's centre at that fraction of the (slice, row, column) extent;
    the ball is round in patient space whatever the orientation. The noise (sd 25 HU) gives a
    seeded network something to tell apart. The affine's entries are float32 numbers.
    """
    cosines = orientation_cosines(orientation, head_first)
    normal = np.cross(cosines[:3], cosines[3:])
    affine = slice_affine(np.array(origin, dtype=np.float64), cosines, normal, spacing_mm)
    # NIfTI keeps its affine in float32: a grid that is float32-exact is the same grid in the
    # file MONAI reads as in memory (an oblique affine otherwise moves by ~3e-8 mm, enough to
    # flip a seeded network's coin-toss voxels).
    affine = affine.astype(np.float32).astype(np.float64)
    voxels = _ball_voxels(
        shape, affine, blob_at=blob_at, radius_mm=blob_radius_mm, background=background, blob=blob
    )
    voxels += np.random.default_rng(seed).normal(0.0, 25.0, shape).astype(np.float32)
    uid = f"2.25.{seed + 1}{_ORIENTATIONS.index(orientation) + 1}{int(head_first)}"
    return ImageVolume(
        voxels=voxels,
        spacing_mm=spacing_mm,
        affine=affine,
        sop_instance_uids=tuple(f"{uid}.{k + 1}" for k in range(shape[0])),
        series_instance_uid=uid,
        frame_of_reference_uid=f"{uid}.0",
        image_orientation_patient=tuple(float(v) for v in cosines),
    )


def _ball_voxels(
    shape: tuple[int, int, int],
    affine: npt.NDArray[np.float64],
    *,
    blob_at: tuple[float, float, float],
    radius_mm: float,
    background: float,
    blob: float,
) -> npt.NDArray[np.float32]:
    index = np.moveaxis(np.indices(shape), 0, -1).astype(np.float64)
    patient = index @ affine[:3, :3].T + affine[:3, 3]
    centre_index = np.array([f * (n - 1) for f, n in zip(blob_at, shape, strict=True)])
    centre = affine[:3, :3] @ centre_index + affine[:3, 3]
    inside = np.linalg.norm(patient - centre, axis=-1) <= radius_mm
    return np.where(inside, blob, background).astype(np.float32)


def volume_grid(volume: ImageVolume, study_uid: str = "2.25.1") -> ResultGrid:
    """The grid a worker hands a model for ``volume``: one source image per slice."""
    images = tuple(
        SourceImage(
            sop_instance_uid=uid,
            series_instance_uid=volume.series_instance_uid,
            frame_number=None,
            pixels=volume.voxels[k],
        )
        for k, uid in enumerate(volume.sop_instance_uids)
    )
    return ResultGrid(study_uid, volume.modality, images, volume)


def save_volume_npz(volume: ImageVolume, path: Path) -> Path:
    """``volume`` in one ``.npz`` (voxels, affine, spacing, UIDs) for another process."""
    np.savez(
        path,
        voxels=volume.voxels,
        affine=volume.affine,
        spacing=np.array(volume.spacing_mm),
        uids=np.array([volume.series_instance_uid, volume.frame_of_reference_uid]),
        sop_uids=np.array(volume.sop_instance_uids),
    )
    return path


def volume_from_npz(path: Path) -> ImageVolume:
    """The volume :func:`save_volume_npz` wrote."""
    with np.load(path) as data:
        series, frame = (str(uid) for uid in data["uids"])
        spacing = tuple(float(v) for v in data["spacing"])
        return ImageVolume(
            voxels=data["voxels"],
            spacing_mm=(spacing[0], spacing[1], spacing[2]),
            affine=data["affine"],
            sop_instance_uids=tuple(str(uid) for uid in data["sop_uids"]),
            series_instance_uid=series,
            frame_of_reference_uid=frame,
        )


def ras_affine(volume: ImageVolume) -> npt.NDArray[np.float64]:
    """The NIfTI affine of ``volume``: array index (column, row, slice) to RAS mm."""
    return np.asarray(LPS_TO_RAS @ volume.affine[:, [2, 1, 0, 3]], dtype=np.float64)


def write_nifti(volume: ImageVolume, path: Path) -> Path:
    """``volume`` as NIfTI the way a DICOM-to-NIfTI converter writes it (DESIGN16 "Geometry")."""
    return _save_nifti(volume.voxels.transpose(2, 1, 0), ras_affine(volume), path)


def _save_nifti(data: npt.NDArray[Any], affine: npt.NDArray[np.float64], path: Path) -> Path:
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine)  # type: ignore[no-untyped-call]  # nibabel's constructor has no hints
    nib.save(image, str(path))
    return path


def source_grid_of(path: Path, volume: ImageVolume) -> npt.NDArray[np.float32]:
    """A NIfTI (e.g. MONAI's saved prediction) read back as ``volume``'s voxels[k, r, c].

    Refuses a file whose affine or shape is not ``volume``'s: MONAI's Invertd returns the
    prediction on the input's own grid, so no resampling should be needed.
    """
    image = nib.load(str(path))
    if not isinstance(image, nib.Nifti1Image):
        raise TypeError(f"{path.name} is not a NIfTI-1 image")
    data = np.asarray(image.dataobj, dtype=np.float32).squeeze()
    if not np.allclose(image.affine, ras_affine(volume), atol=1e-3):
        raise ValueError(f"{path.name}: affine\n{image.affine}\nis not the source's")
    if data.shape != volume.shape[::-1]:
        raise ValueError(f"{path.name}: shape {data.shape}, the source's is {volume.shape[::-1]}")
    return np.ascontiguousarray(data.transpose(2, 1, 0))


# --- planar images ---


def planar_image(
    shape: tuple[int, int] = (96, 80), *, colour: bool = False, seed: int = 0, index: int = 0
) -> SourceImage:
    """An 8-bit image (grey or RGB) with a bright disc and seeded noise, as a SourceImage.

    Not square, so a network fed the image transposed answers differently.
    """
    rng = np.random.default_rng(seed)
    rows, columns = np.indices(shape)
    disc = (rows - 0.35 * shape[0]) ** 2 + (columns - 0.6 * shape[1]) ** 2 <= (0.2 * shape[0]) ** 2
    grey = np.where(disc, 200.0, 60.0) + np.linspace(0.0, 40.0, shape[1])[None, :]
    grey = grey + rng.normal(0.0, 12.0, shape)
    pixels = np.stack([grey, grey * 0.8, grey * 0.6], axis=-1) if colour else grey
    return SourceImage(
        sop_instance_uid=f"2.25.7{seed}.{index + 1}",
        series_instance_uid=f"2.25.7{seed}",
        frame_number=None,
        pixels=np.clip(np.rint(pixels), 0, 255).astype(np.float32),
    )


def image_grid(images: tuple[SourceImage, ...], modality: str = "OT") -> ResultGrid:
    """A grid of planar images standing alone (no volume)."""
    return ResultGrid("2.25.2", modality, images)


def write_grey_nifti(image: SourceImage, path: Path) -> Path:
    """A grey ``image`` as a 2D NIfTI, column first like dcm2niix's (and classification_template's
    own ``img##.nii.gz``)."""
    return _save_nifti(image.pixels.T, LPS_TO_RAS, path)


def write_png(image: SourceImage, path: Path) -> Path:
    """``image`` as an 8-bit PNG (rows as stored: MONAI's PILReader reads it column-first)."""
    Image.fromarray(image.pixels.astype(np.uint8)).save(path)
    return path


def write_json(data: Any, path: Path) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


# --- MONAI's own runner ---


def monai_run(folder: Path, config_file: Path, overrides: Mapping[str, Any]) -> None:
    """MONAI's own bundle runner on ``folder``, in a fresh interpreter, from the bundle folder.

    Run from the bundle folder as the zoo's READMEs say (``scripts`` imports from there).

    Raises
    ------
    RuntimeError
        The runner failed; with the end of its output.
    """
    arguments = {"config_file": str(config_file), "bundle_root": str(folder), **overrides}
    # The overrides (lists, dicts, expressions) go in an args file, which `run` reads like its
    # command-line options, rather than through fire's parsing of the command line.
    args_file = folder.parent / f"{folder.name}-monai-args.json"
    args_file.write_text(json.dumps(arguments))
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--args_file", str(args_file)],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"monai.bundle run failed ({done.returncode}):\n{done.stderr[-4000:]}")
