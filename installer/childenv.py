"""The environment the installer gives the programs it runs (compose v1 or v2, the docker CLI).

Nothing of the installer's own Python reaches them: Debian's docker-compose v1 is a
Python program, and a PYTHONPATH pointing at the kit's packages makes it import the
kit's docker SDK and die. A one-file executable's loader changes LD_LIBRARY_PATH for
itself; the children get the host's own value back.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, Optional

# Variables that steer a Python interpreter; none of them is the children's business.
PYTHON_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "PYTHONEXECUTABLE", "PYTHONUSERBASE",
                    "PYTHONNOUSERSITE", "PYTHONINSPECT", "PYTHONPLATLIBDIR", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS",
                    "PYTHONDEVMODE", "PYTHONUTF8", "PYTHONIOENCODING", "_MEIPASS2", "_PYI_APPLICATION_HOME_DIR",
                    "_PYI_ARCHIVE_FILE", "_PYI_PARENT_PROCESS_LEVEL", "_PYI_LINUX_PROCESS_NAME")


def child_environment(base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without the installer's Python settings."""
    env = dict(os.environ if base is None else base)
    for name in PYTHON_VARIABLES:
        env.pop(name, None)
    for name in ("LD_LIBRARY_PATH", "LD_PRELOAD"):
        original = env.pop(f"{name}_ORIG", None)  # the host's value, saved by a one-file loader that changed it
        if original is not None:
            env[name] = original
        elif getattr(sys, "frozen", False):
            env.pop(name, None)  # set by the loader for itself; the host had none
    return env
