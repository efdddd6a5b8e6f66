"""DICOM CT series, split along its seams.

``files`` (which files are DICOM), ``headers`` (per-slice geometry and rescale), ``series`` (grouping and the
choice of one CT series), ``pixels`` (decoding to HU), ``geometry`` (ordering, gaps, resampling onto a regular
grid) and ``reader`` (``read_series``: all of them in order, plus the non-identifying facts kept in ``info``).
"""

from ct_projection.dicom.files import looks_like_dicom, study_key
from ct_projection.dicom.reader import DicomVolume, read_series

__all__ = ["DicomVolume", "looks_like_dicom", "read_series", "study_key"]
