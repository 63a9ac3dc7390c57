"""Orthanc integration: the plugin script Orthanc's Python plugin runs (``plugin.py``).

``plugin.py`` is loaded by Orthanc itself (``"PythonScript"`` in its
configuration), not imported by cad-node; ``orthanc.pyi`` types the ``orthanc``
module it uses so mypy checks it.
"""

from pathlib import Path

PLUGIN_PATH = Path(__file__).with_name("plugin.py")
"""The script to name in Orthanc's ``"PythonScript"`` setting."""
