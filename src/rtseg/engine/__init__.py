"""Training and evaluation loops shared by every model."""
