"""DICOM files written by pydicom for tests: radiographs with a patient in the header."""

import io

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

# Written into every test file's header; no output of the project may contain them.
PATIENT_NAME = "Doe^Jane^Quinta"
PATIENT_BIRTH_DATE = "19710203"
PATIENT_ID = "PID-4471-XQ"


def _dataset(pixels: np.ndarray, photometric: str, transfer_syntax=ExplicitVRLittleEndian):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.PatientID = PATIENT_ID
    ds.Modality = "IO"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **elements):
    """Writes an uncompressed single-frame DICOM file; `elements` are set on the dataset
    (e.g. WindowCenter=..., RescaleSlope=...)."""
    ds = _dataset(pixels, photometric)
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_jpeg_dicom(path, pixels: np.ndarray):
    """Writes an RGB image as a JPEG-compressed (baseline, YBR_FULL_422) DICOM file."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    ds = _dataset(pixels, "YBR_FULL_422", JPEGBaseline8Bit)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.save_as(path, enforce_file_format=True)
    return path
