"""A plugin whose import fails, to show that it does not stop the others."""

raise ImportError("this plugin is broken on purpose")
