"""The testing kit's machinery, private: what :mod:`pipeline_core.testing` offers, without pytest.

The public kit imports pytest (its fixtures), so nothing else may import it; the tiny model,
the isolated registries, the quick runs (:mod:`.tiny`) and the step contract's checks
(:mod:`.contract`) live here, above the engine they drive, and the public module re-exports them.
"""
