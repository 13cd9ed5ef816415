"""``param`` steps: decide, once after the init steps, which tensors the updates change (a spectrum, a phase)."""
