"""Hand a pretrained encoder on: safetensors weights with their spec, or one TorchScript or ONNX file.

Every format writes `encoder.json` beside the weights: the encoder spec (backbone, arguments, input channels,
image size, value range, input transform), the expected input, the feature size, the method and config that
trained it, and selfsup's version. TorchScript and ONNX hold the whole encoder, input transform included, and
run without selfsup installed.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, checkpoint
from .encoders import EncoderSpec
from .errors import ConfigError
from .files import atomic_write, write_json

FORMATS = ("safetensors", "torchscript", "onnx")
FILES = {"safetensors": "encoder.safetensors", "torchscript": "encoder.torchscript.pt", "onnx": "encoder.onnx"}


def describe_input(spec: EncoderSpec) -> dict[str, Any]:
    """What the exported encoder takes and gives."""
    size = spec.image_size
    return {"shape": ["batch", spec.in_channels, size, size], "dtype": "float32", "range": list(spec.value_range),
            "layout": "NCHW, RGB order for 3 channels; uint8 images divided by 255, no mean/std normalisation",
            "transform_inside": spec.input_transform}


def export(source: str | Path, fmt: str, out: str | Path) -> dict[str, Path]:
    """Export the encoder of a checkpoint file or run directory to `out`; returns {kind: path} of what was written."""
    from .factory import method_from

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    path, state = checkpoint.read(source)
    method, cfg = method_from(state)
    encoder = method.backbone.eval()
    spec = encoder.spec
    if not spec.image_size:
        raise ConfigError(f"{path} does not say the image size its encoder was trained at; re-run pretraining "
                          f"with --image-size to export it")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write to {out} ({e.strerror}); choose another --out") from None
    written = {fmt: WRITERS[fmt](encoder, out / FILES[fmt])}
    if fmt == "safetensors" and spec.backbone.startswith("resnet") and not spec.input_transform:
        written["torchvision"] = save_torchvision(encoder, out / "encoder-torchvision.safetensors")
    meta = {"format": fmt, "files": {k: p.name for k, p in written.items()}, "encoder": spec.to_dict(),
            "input": describe_input(spec), "features": encoder.out_dim, "method": cfg.method,
            "config": cfg.to_dict(), "checkpoint": str(path), "selfsup": __version__}
    written["json"] = write_json(out / "encoder.json", meta)
    return written


def _save_safetensors(encoder: nn.Module, path: Path) -> Path:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    return atomic_write(path, lambda f: f.write(save(tensors)))


def _example(encoder: nn.Module, batch: int = 2) -> torch.Tensor:
    s = encoder.spec
    return torch.rand(batch, s.in_channels, s.image_size, s.image_size, generator=torch.Generator().manual_seed(0))


def _save_torchscript(encoder: nn.Module, path: Path) -> Path:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript still loads everywhere; its writer is frozen
        traced = torch.jit.trace(encoder, _example(encoder), check_inputs=[(_example(encoder, 5),)])
        return atomic_write(path, lambda f: torch.jit.save(traced, f))


def _save_onnx(encoder: nn.Module, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated in favour of torch.export's
        torch.onnx.export(encoder, (_example(encoder),), buf, input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, dynamo=False)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


WRITERS = {"safetensors": _save_safetensors, "torchscript": _save_torchscript, "onnx": _save_onnx}


def torchvision_names(encoder: nn.Module) -> dict[str, str]:
    """selfsup's ResNet parameter and buffer names -> torchvision.models.resnet's (the `fc` classifier has none)."""
    out, where, stage, index = {}, {}, 1, -1
    for i, block in enumerate(encoder.body):  # a stage starts where a block needs a projection shortcut
        stage, index = (stage + 1, 0) if i > 0 and not isinstance(block.skip, nn.Identity) else (stage, index + 1)
        where[i] = (stage, index)
    convs = {"f.0.0": "conv1", "f.0.1": "bn1", "f.1.0": "conv2", "f.1.1": "bn2", "f.2.0": "conv3", "f.2.1": "bn3",
             "skip.0": "downsample.0", "skip.1": "downsample.1"}
    stem = "stem.0.0" if isinstance(encoder.stem[0], nn.Sequential) else "stem.0"
    stem_bn = "stem.0.1" if stem == "stem.0.0" else "stem.1"
    for key in encoder.state_dict():
        if key.startswith(stem + "."):
            out[key] = "conv1." + key[len(stem) + 1:]
        elif key.startswith(stem_bn + "."):
            out[key] = "bn1." + key[len(stem_bn) + 1:]
        elif key.startswith("body."):
            _, i, rest = key.split(".", 2)
            part, leaf = rest.rsplit(".", 1)
            stage, index = where[int(i)]
            out[key] = f"layer{stage}.{index}.{convs[part]}.{leaf}"
    return out


def save_torchvision(encoder: nn.Module, path: Path) -> Path:
    """The trunk under torchvision's names: `torchvision.models.resnet18()` loads it with strict=False, missing
    only `fc` (with the small 3x3 stem, first give the model a 3x3 `conv1` and an Identity `maxpool`)."""
    from safetensors.torch import save

    state = encoder.state_dict()
    tensors = {tv: state[k].detach().contiguous().cpu() for k, tv in torchvision_names(encoder).items()}
    return atomic_write(path, lambda f: f.write(save(tensors)))
