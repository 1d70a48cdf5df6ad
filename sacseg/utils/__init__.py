"""Small helpers shared by every layer: atomic file writes and image files, int-or-pair sizes, devices, optional dependencies, the git revision."""
