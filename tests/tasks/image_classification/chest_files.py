"""Chest X-ray data sets in the layouts users have, generated: Kaggle's folders (JPEG or DICOM) and
MedMNIST's npz. The pictures are the example's drawn shapes (NORMAL a square, PNEUMONIA a bar), grayscale,
so a small CNN learns them in an epoch; only the layout, the names and the formats are the real ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from torchkiln.tasks.image_classification.example import draw

from ...components.dicom_files import write_dicom

CLASSES = ("NORMAL", "PNEUMONIA")


def file_name(cls: int, patient: int, n: int, suffix: str) -> str:
    """Kaggle's names: NORMAL ``IM-0115-0001.jpeg`` (patient IM-0115), PNEUMONIA ``person1_bacteria_1.jpeg``
    (patient person1)."""
    return f"IM-{patient:04d}-{n:04d}{suffix}" if cls == 0 else f"person{patient}_bacteria_{n}{suffix}"


def write_chest_xray(
    root: Path,
    *,
    patients: dict[str, tuple[int, int]] | None = None,
    per_patient: int = 2,
    size: int = 16,
    dicom: bool = False,
    seed: int = 0,
) -> Path:
    """Write ``root/{train,val,test}/{NORMAL,PNEUMONIA}/`` with ``patients[split] = (normal, pneumonia)``
    patients of ``per_patient`` images each; each patient in one split. DICOM files are 12-bit
    MONOCHROME2 with a rescale and a window; JPEGs are 8-bit grayscale."""
    patients = patients or {"train": (15, 15), "val": (1, 1), "test": (3, 3)}
    rng = np.random.default_rng(seed)
    next_patient = [100, 1]
    for split, per_class in patients.items():
        for cls, n_patients in enumerate(per_class):
            folder = root / split / CLASSES[cls]
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(n_patients):
                patient, next_patient[cls] = next_patient[cls], next_patient[cls] + 1
                for n in range(1, per_patient + 1):
                    gray = draw(cls, rng, size)
                    name = file_name(cls, patient, n, ".dcm" if dicom else ".jpeg")
                    if dicom:
                        stored = gray.astype(np.uint16) * 16  # 8 -> 12 bits
                        write_dicom(folder / name, stored, rescale=(1, -1024), window=(800, 3000))
                    else:
                        Image.fromarray(gray).save(folder / name, quality=95)
    return root


def write_pneumoniamnist(path: Path, *, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """MedMNIST's layout: ``{split}_images`` uint8 (N, 28, 28), ``{split}_labels`` uint8 (N, 1), no names."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (sizes or {"train": 60, "val": 12, "test": 12}).items():
        labels = (np.arange(n) % 3 != 0).astype(np.uint8)  # 2 pneumonia : 1 normal, as in the real one
        arrays[f"{split}_images"] = np.stack([draw(int(y), rng, 28) for y in labels])
        arrays[f"{split}_labels"] = labels[:, None]
    np.savez_compressed(path, **arrays)
    return path
