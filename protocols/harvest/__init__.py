"""The harvest role: volunteer this device's idle compute safely, meter it, and run work on it."""
