"""Reading recipes, private to the host.

Everything that can be known about a recipe is checked here, before a model is loaded, so a
mistake costs a second and names its file and line instead of surfacing mid-run.
"""
