"""The event loop for the HTTP servers: uvloop when installed, else asyncio's.

uvloop's libuv-based loop cuts the router's CPU per proxied request (see
bench/router_overhead.py); it is a dependency, but the servers still run on
the standard loop where it cannot be installed.
"""

from __future__ import annotations

import asyncio


def event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
