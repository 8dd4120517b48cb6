"""selfsup: self-supervised pretraining on images, evaluated honestly against few-label baselines."""
__version__ = "0.1.0"
