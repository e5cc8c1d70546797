"""simgen's built-in simulators.

Each module holds one simulator. They are registered through the entry-point group
``simgen.simulators`` in ``pyproject.toml``, the same door third-party plugins use.
"""
