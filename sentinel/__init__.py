"""Sentinel: real-time card-fraud detection, SQL first."""

__version__ = "0.1.0"
