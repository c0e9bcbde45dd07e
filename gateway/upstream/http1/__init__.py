"""A keep-alive HTTP/1.1 client for the gateway's calls to its nodes.

aiohttp's client (which the gateway still uses for health and load probes) builds per
call a request and a response object, header multidicts, timers, a task that writes the
body and a stream reader fed chunk by chunk. A chat call needs less: a POST with a body,
a status, headers, and a body framed by Content-Length, chunked coding or the close of
the connection. Measured with ``bench/paired_ab.py``, this client made a request through
the gateway cost 11-16% less CPU (docs/benchmarks.md).

:class:`Connections` keeps connections per node origin; :class:`Response` is one answer,
its body a :class:`ResponseBody`. Transport failures are :class:`HttpError`; the
gateway's own errors are made from them in :mod:`gateway.upstream.client`.
"""

from gateway.upstream.http1.body import ResponseBody
from gateway.upstream.http1.errors import (
    ConnectFailed,
    ConnectionLost,
    HttpError,
    InvalidRequestHeader,
    MalformedResponse,
)
from gateway.upstream.http1.pool import Connections, Response

__all__ = [
    "ConnectFailed",
    "ConnectionLost",
    "Connections",
    "HttpError",
    "InvalidRequestHeader",
    "MalformedResponse",
    "Response",
    "ResponseBody",
]
