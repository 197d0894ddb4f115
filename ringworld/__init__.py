"""ringworld: one transformer over text, image, video and action tokens."""

__version__ = "0.1.0"
