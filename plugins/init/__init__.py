"""``init`` steps: make the starting image once, before the loop (noise, or photos)."""
