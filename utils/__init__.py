"""Ground floor: atomic file I/O, logging, device and precision choices, torchrun helpers.

Nothing here imports the rest of the project."""
