# The twistd dropin: it imports ServiceMaker and nothing else, so that
# `twistd --help` never imports (or fails on) our code.  No __init__.py may
# live beside this file (STACK-NOTES section 1).
from twisted.application.service import ServiceMaker

cloudshellFog = ServiceMaker(
    "cloudshell-fog",
    "cloudshell_fog.service",
    "Browser and terminal shell gateway with fog-first placement",
    "cloudshell-fog",
)
