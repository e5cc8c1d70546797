"""simgen's benchmarks: one runnable module per question, ``python -m benchmarks.NAME``."""
