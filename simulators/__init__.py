"""simgen's built-in simulators, installed as ``simgen.builtin``.

Each module holds one simulator. They are registered through the entry-point group
``simgen.simulators`` in ``pyproject.toml``, the same door third-party plugins use. This
folder is not a top-level package of its own: simgen claims no import name outside ``simgen``,
so importing it as ``simulators`` (from the repository's root, where the folder is on the
path) is refused.
"""

if __name__ != "simgen.builtin":
    raise ImportError(
        f"the built-in simulators are the package simgen.builtin, not '{__name__}': "
        "import simgen.builtin (or name them: simgen.get_simulator('two_moons'))"
    )
