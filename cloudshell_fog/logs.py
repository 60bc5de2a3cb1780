"""
The gateway's own log format: C{LOG_FORMAT=text} (default) or C{json} (one
JSON object per line, for log shippers).  Use it with twistd's logger option:

    twistd --logger=cloudshell_fog.logs.observer -n cloudshell-fog

Events never carry tokens or terminal input (see the access log formatter and
the audit module); JSON lines keep every structured field of an event.
"""

from __future__ import annotations

import os
import sys

from twisted.logger import jsonFileLogObserver, textFileLogObserver

FORMATS = ("text", "json")


def observer(stream=None, env=None):
    """The log observer LOG_FORMAT asks for, writing to C{stream} (standard output)."""
    env = os.environ if env is None else env
    stream = stream or sys.stdout
    kind = env.get("LOG_FORMAT", "text").strip().lower() or "text"
    if kind not in FORMATS:
        sys.stderr.write(f"cloudshell-fog: configuration error: LOG_FORMAT: value: must be text or json, not {kind!r}\n")
        raise SystemExit(2)
    if kind == "json":
        return jsonFileLogObserver(stream, recordSeparator="")
    return textFileLogObserver(stream)
