"""speedsign: train and compare speed-limit sign classifiers three ways."""

__version__ = "0.1.0"
