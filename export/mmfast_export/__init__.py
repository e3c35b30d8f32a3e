"""mmfast_export: the PyTorch side of mmfast (data, models, training; needs torch)."""

__version__ = "0.1.0"
