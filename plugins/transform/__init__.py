"""``transform`` steps: every iteration, change the stored image (``on: image``) or build what the
model sees from it (``on: view``); a step that makes sense in one place declares it in ``places``."""
