"""DICOMweb: the STOW-RS receiver (a source beside the DIMSE SCP)."""
