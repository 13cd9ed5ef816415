"""``objective`` steps: a loss per image from the model's outputs (classes, hidden layers) or the
image itself; the loop sums the active ones and back-propagates once."""
