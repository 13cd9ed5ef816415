"""The built-in plugins. Each module registers through the same hooks a third-party plugin uses."""

from . import (
    blur,
    color_jitter,
    cross_entropy,
    fourier_image,
    init_image,
    init_noise,
    interpolate,
    l1_loss,
    octave,
    rotate,
    target_blend,
    torchvision_models,
    updates,
    view_transforms,
)

BUILTIN_PLUGINS = [
    init_noise,
    init_image,
    blur,
    interpolate,
    color_jitter,
    rotate,
    view_transforms,
    octave,
    l1_loss,
    cross_entropy,
    target_blend,
    updates,
    fourier_image,
    torchvision_models,
]
