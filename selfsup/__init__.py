"""selfsup: self-supervised pretraining on images, evaluated honestly against few-label baselines."""
__version__ = "0.1.0"


def load_encoder(path):
    """The pretrained encoder (an `nn.Module` on CPU, eval mode, with `.spec`) of a run directory, a checkpoint
    file, or a folder written by `selfsup export --format safetensors`."""
    from .factory import encoder_and_config

    return encoder_and_config(path)[0]
