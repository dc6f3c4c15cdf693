"""The Content-Security-Policy every response carries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponseBase

HEADER = "Content-Security-Policy"

# Only the project's own files run or style the page: no inline script or style, no CDN,
# no plugins, no framing (clickjacking), forms post only back here. The page's socket is
# same-origin; `'self'` covers ws: and wss: in CSP 3 browsers, and the explicit
# ws://host wss://host source is there for the older ones that read `'self'` as http(s) only.
POLICY = (
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'{sockets}",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)


def content_security_policy(request: HttpRequest) -> str:
    try:
        # Validated against ALLOWED_HOSTS, so it cannot smuggle in a source of its own.
        host = request.get_host()
    except DisallowedHost:
        return "; ".join(POLICY).format(sockets="")
    return "; ".join(POLICY).format(sockets=f" ws://{host} wss://{host}")


class ContentSecurityPolicyMiddleware:
    """Add the project's Content-Security-Policy unless a view set its own."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        return self.process(request, self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        return self.process(request, await self.get_response(request))

    def process(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if HEADER not in response:
            response[HEADER] = content_security_policy(request)
        return response
