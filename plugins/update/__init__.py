"""``update`` steps: change the image's parameters in place from their gradients (plain, sign, Adam, NAdam)."""
