"""An example third-party simulator package."""
