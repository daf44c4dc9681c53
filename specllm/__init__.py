"""specllm: stellar parameters and abundances from survey spectra, treating spectra as language.

    import specllm
    model = specllm.load_model()            # the shipped model (or a model / training-run directory)
    table = model.predict(["spec-1.fits.gz", "spec-2.fits.gz"])   # or (wave, flux[, ivar, mask]), or Spectrum1D
    table.write("predictions.fits")         # astropy Table: infer's columns, units and metadata

Importing specllm is cheap: torch and the model load inside `load_model` (`specllm.api`).
"""

from ._version import __version__


def load_model(path=None, device=None):
    """The model at `path` (a model or training-run directory; None: the model shipped with specllm), ready to
    `predict(...)`: see `specllm.api`."""
    from .api import load_model as _load

    return _load(path, device)


__all__ = ["__version__", "load_model"]
