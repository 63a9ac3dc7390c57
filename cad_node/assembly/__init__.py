"""Assembly: deciding when a series is complete (quiet timer, expected count)."""
