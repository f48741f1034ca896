"""The real INTEGRAL files shipped with the package (``followup/data/``, package data).

They are the embedded defaults of the local light-curve source and of the orbit
reader, so a fresh install runs the follow-up without a network; their origins and
licenses are in ``followup/data/README.md``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SPIACS_LC_GRB230307A = "spiacs_lc_GRB230307A.fits"
"""Real SPI-ACS light curve of GRB 230307A (MMODA, 0.1 s bins, ±270 s)."""
ORBIT_FILE = "sc_orbit_param.fits.gz"
"""Real INTEGRAL orbit/attitude file (INTL-ORBI-SCP, revolution 789)."""
IBAS_TRIGGERS = "all_acs_ibas_triggers.csv"
"""List of SPI-ACS IBAS trigger times, 2002-2020."""


def bundled_data_dir() -> Path:
    """The folder holding the bundled INTEGRAL files.

    A real directory: setuptools installs package data as plain files, and the local
    light-curve source and the orbit reader walk it with ``rglob`` (a zipped
    installation is not supported).
    """
    return Path(str(files("followup") / "data"))


def folder_label(directory: Path) -> str:
    """How a published message names a local data folder: never a path of this machine.

    The bundled folder is "the bundled INTEGRAL files"; another folder goes by its
    last component only (``the local folder 'spiacs'``).
    """
    try:
        if Path(directory).resolve() == bundled_data_dir().resolve():
            return "the bundled INTEGRAL files"
    except OSError:
        pass
    return f"the local folder {Path(directory).name!r}"
