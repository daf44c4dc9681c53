"""specllm: stellar parameters and abundances from survey spectra, treating spectra as language."""

__version__ = "0.1.0"
