"""Prefect flows, the command line and the typed params of faceflow.

Offline by default: no analytics or telemetry from Prefect, DVC or ONNX Runtime. These are
defaults only; anything set in the environment wins.
"""

import os

for _name, _value in {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "ORT_DISABLE_TELEMETRY": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}.items():
    os.environ.setdefault(_name, _value)
