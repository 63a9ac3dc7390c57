"""Series volumes for models: slices sorted, rescaled, spacing-aware."""
