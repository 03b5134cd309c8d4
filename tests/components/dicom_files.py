"""Small DICOM files written by pydicom as a modality would: 16-bit grayscale, optional rescale, window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def dicom_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    patient: str = "P0001",
) -> Dataset:
    """A single-frame DICOM data set of uint16 ``pixels`` ``(H, W)``; ``rescale`` is (slope, intercept),
    ``window`` (center, width)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", patient
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def write_dicom(path: Path, pixels: np.ndarray, **settings: object) -> Path:
    """Write a DICOM Part 10 file (preamble, DICM prefix, file meta) of ``pixels``: :func:`dicom_dataset`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dicom_dataset(pixels, **settings).save_as(path, enforce_file_format=True)  # type: ignore[arg-type]
    return path
