"""The built-in plugins, installed as ``pipeline_plugins``; each registers through the same hooks
a third-party plugin uses.

One step per module, in the package of its kind (``StepKind``'s values, in the order one
iteration runs them): ``init``, ``param``, ``transform``, ``objective``, ``update``. A module
is named for the step it registers (``L1-loss`` in ``objective/l1_loss.py``). The two model
plugins, ``torchvision_models`` and ``timm_models``, are not steps and keep their modules (and
so their plugin names, which the recipe loader uses to recognise torchvision's downloads). Helpers several steps share sit beside them in a module named for
what it holds (``photo_files``, ``init/image_size``, ``objective/activations``,
``update/update_params``); ``photos/`` holds the photographs ``bn-statistics`` measures by
default. The old flat modules (``pipeline_plugins.view_transforms``, ...) still import, with a
DeprecationWarning (``moved_modules``).
"""

from . import moved_modules, timm_models, torchvision_models
from .init import init_image, init_noise
from .objective import (
    backdrop,
    bn_statistics,
    channel,
    channel_interpolate,
    class_map,
    cross_entropy,
    direction,
    diversity,
    keep_photo,
    l1_loss,
    layer,
    neuron,
    shape_contrast,
    target_blend,
    tone,
)
from .param import deep_prior, fourier_image, phase_image
from .transform import (
    blur,
    color_jitter,
    crops,
    interpolate,
    jitter,
    noise,
    octave,
    random_scale,
    rotate,
    skip_gradient,
    spectrum_jitter,
)
from .update import adam, gradient_step, nadam, sign_step

moved_modules.install()

#: every built-in plugin module, registered in this order (built-ins first, so a third-party
#: plugin cannot take their names); by kind, as one iteration runs them, then the models
BUILTIN_PLUGINS = [
    init_noise,
    init_image,
    fourier_image,
    phase_image,
    deep_prior,
    blur,
    interpolate,
    color_jitter,
    rotate,
    jitter,
    random_scale,
    crops,
    noise,
    spectrum_jitter,
    octave,
    skip_gradient,
    l1_loss,
    cross_entropy,
    class_map,
    shape_contrast,
    target_blend,
    channel,
    neuron,
    direction,
    layer,
    channel_interpolate,
    diversity,
    keep_photo,
    bn_statistics,
    tone,
    backdrop,
    gradient_step,
    sign_step,
    adam,
    nadam,
    torchvision_models,
    timm_models,
]
