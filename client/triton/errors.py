"""The errors of launching tritonserver, shared by locating / preparing the installation
(``install``) and running the process (``server``), so neither module has to import the other's.
"""

from __future__ import annotations


class TritonServerError(RuntimeError):
    """The server could not be located, prepared, started or made ready."""


class TritonNotInstalledError(TritonServerError):
    """``nvidia-pytriton`` (which ships the tritonserver binary) is not installed."""
