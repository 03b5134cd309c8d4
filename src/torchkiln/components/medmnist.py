"""The class names of MedMNIST's 2D data sets, which their ``.npz`` files do not carry.

Copied from the ``label`` entries of ``INFO`` in medmnist 3.0.2's ``medmnist/info.py`` (the data sets
are CC BY 4.0, DermaMNIST CC BY-NC 4.0): label ``i`` is ``names[i]``. ChestMNIST (multi-label) and
RetinaMNIST (grades 0 to 4, named by their digits) are left out: the first is not single-label, and
the second's names would be "0".."4" anyway.
"""

from __future__ import annotations

import re
from pathlib import Path

_ORGAN = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)
LABELS: dict[str, tuple[str, ...]] = {
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal, benign"),
    "octmnist": ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    "dermamnist": (
        "actinic keratoses and intraepithelial carcinoma",
        "basal cell carcinoma",
        "benign keratosis-like lesions",
        "dermatofibroma",
        "melanoma",
        "melanocytic nevi",
        "vascular lesions",
    ),
    "bloodmnist": (
        "basophil",
        "eosinophil",
        "erythroblast",
        "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
        "lymphocyte",
        "monocyte",
        "neutrophil",
        "platelet",
    ),
    "pathmnist": (
        "adipose",
        "background",
        "debris",
        "lymphocytes",
        "mucus",
        "smooth muscle",
        "normal colon mucosa",
        "cancer-associated stroma",
        "colorectal adenocarcinoma epithelium",
    ),
    "tissuemnist": (
        "Collecting Duct, Connecting Tubule",
        "Distal Convoluted Tubule",
        "Glomerular endothelial cells",
        "Interstitial endothelial cells",
        "Leukocytes",
        "Podocytes",
        "Proximal Tubule Segments",
        "Thick Ascending Limb",
    ),
    "organamnist": _ORGAN,
    "organcmnist": _ORGAN,
    "organsmnist": _ORGAN,
}
# pneumoniamnist.npz, and MedMNIST+'s larger sizes: pneumoniamnist_64.npz, _128, _224.
_FILE_NAME = re.compile(r"([a-z]+mnist)(?:_(?:64|128|224))?\.npz")


def medmnist_classes(path: str | Path) -> list[str] | None:
    """The documented class names of a MedMNIST file, by its name; None for any other file.

    Example:
        >>> medmnist_classes("data/pneumoniamnist_224.npz")
        ['normal', 'pneumonia']
    """
    found = _FILE_NAME.fullmatch(Path(path).name.lower())
    names = LABELS.get(found.group(1)) if found else None
    return list(names) if names else None
