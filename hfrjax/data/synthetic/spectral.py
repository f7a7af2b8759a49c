"""Spectral reflectance model of skin, hair, eyes and mouth in five camera bands.

Bands: R (~610 nm), G (~550 nm), B (~465 nm), NIR850 and NIR940; a VIS camera sees the first
three, an NIR camera one of the last two. Skin is a dermal scattering base attenuated by
melanin and haemoglobin (Beer-Lambert, ``rho = base * exp(-(c_mel mu_mel + c_hb mu_hb))``);
melanin absorption falls as ~lambda^-3.3, haemoglobin absorbs green and blue strongly, red
weakly and NIR hardly at all, so at 850 nm skin is bright and nearly independent of melanin
(the NIR-VIS gap that the Rethinking paper's red-channel augmentation narrows: NIR looks like
the red end of the visible spectrum).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BANDS = ("r", "g", "b", "nir850", "nir940")
BAND_INDEX = {"vis": (0, 1, 2), "nir850": (3,), "nir940": (4,)}
WAVELENGTH_NM = np.array([610.0, 550.0, 465.0, 850.0, 940.0])

# Melanin absorbance ~ lambda^-3.3, normalised at 465 nm.
MU_MELANIN = (WAVELENGTH_NM / 465.0) ** -3.3
# Haemoglobin (oxy/deoxy mix): strong in green (Q bands) and blue, weak in red, ~0 in NIR.
MU_HAEMOGLOBIN = np.array([0.10, 0.85, 0.75, 0.03, 0.03])
# Dermal scattering base: rises with wavelength; 940 nm loses some to water absorption.
DERMIS = np.array([0.70, 0.60, 0.52, 0.76, 0.68])
# Hair: eumelanin (brown-black) and pheomelanin (red-yellow) on a keratin base.
_MU_EUMELANIN = (WAVELENGTH_NM / 465.0) ** -2.6
_MU_PHEOMELANIN = np.array([0.15, 0.55, 1.0, 0.02, 0.02])
_HAIR_BASE = np.array([0.55, 0.55, 0.55, 0.62, 0.60])
# Iris stroma: blue-scattering base, melanin on top.
_IRIS_BASE = np.array([0.25, 0.30, 0.42, 0.45, 0.42])

SCLERA = np.array([0.72, 0.68, 0.64, 0.78, 0.74])
PUPIL = np.array([0.03, 0.03, 0.03, 0.06, 0.06])
TEETH = np.array([0.72, 0.68, 0.56, 0.78, 0.75])
MOUTH_CAVITY = np.array([0.10, 0.03, 0.03, 0.12, 0.11])
NOSTRIL = np.array([0.06, 0.03, 0.03, 0.10, 0.09])
LASH = np.array([0.03, 0.03, 0.03, 0.10, 0.09])


def skin_reflectance(
    melanin: np.ndarray | float, haemoglobin: np.ndarray | float, bands: Sequence[int]
) -> np.ndarray:
    """Band reflectances [len(bands), ...] of skin with the given pigment concentrations."""
    mel = np.asarray(melanin, np.float32)
    hb = np.asarray(haemoglobin, np.float32)
    out = [
        np.float32(DERMIS[b])
        * np.exp(-(mel * np.float32(MU_MELANIN[b]) + hb * np.float32(MU_HAEMOGLOBIN[b])))
        for b in bands
    ]
    return np.stack(out).astype(np.float32)


def hair_spectrum(eumelanin: float, pheomelanin: float, grey: float) -> np.ndarray:
    rho = _HAIR_BASE * np.exp(-(eumelanin * _MU_EUMELANIN + pheomelanin * _MU_PHEOMELANIN))
    return (1.0 - grey) * rho + grey * np.array([0.60, 0.60, 0.62, 0.62, 0.60])


def iris_spectrum(melanin: float) -> np.ndarray:
    return _IRIS_BASE * np.exp(-melanin * MU_MELANIN)


def cct_rgb(kelvin: float) -> np.ndarray:
    """Relative R, G, B power of a black body at ``kelvin``, white (1, 1, 1) at 6500 K."""

    def planck(t):
        lam = WAVELENGTH_NM[:3] * 1e-9
        return 1.0 / (lam**5 * (np.exp(1.4388e-2 / (lam * t)) - 1.0))

    rgb = planck(kelvin) / planck(6500.0)
    return rgb / rgb[1]
