"""
The AMQP 0-9-1 specification, with RabbitMQ's extensions, loaded once per process.

The XML ships inside the package (``txmsg/amqp0-9-1.xml``, read with
C{importlib.resources}); txAMQP's spec loader turns it into its method model,
which txmsg's own codec compiles into encoders and decoders.
"""

from __future__ import annotations

import threading
from importlib import resources
from typing import Any

from txamqp import spec as _txspec

SPEC_RESOURCE = "amqp0-9-1.xml"

_lock = threading.Lock()
_loaded: Any = None


def spec_text() -> str:
    """
    The spec XML as shipped inside the installed package.
    """
    return resources.files("txmsg").joinpath(SPEC_RESOURCE).read_text(encoding="utf-8")


def load_spec() -> Any:
    """
    Return the process-wide parsed spec (a txAMQP C{Spec}), parsing it on first use only.
    """
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                _loaded = _txspec.load_string(spec_text(), specfilename=SPEC_RESOURCE)
    return _loaded


def method(class_name: str, method_name: str) -> Any:
    """
    The spec's method object for C{class_name.method_name}, e.g. C{("basic", "publish")}.
    """
    return load_spec().classes.byname[class_name].methods.byname[method_name]
