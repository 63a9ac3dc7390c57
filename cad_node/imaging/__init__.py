"""Series volumes for models: slices sorted, rescaled, spacing-aware."""

from cad_node.imaging import jpeg12

jpeg12.register()
