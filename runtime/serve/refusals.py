"""How args-serve says no: the OpenAI error object every refusal and failure is answered with, and `Refused`, the
typed error of a request turned away on purpose (a missing key, a body too large, a full queue, a deadline passed).
A Refused is a Starlette HTTPException, so the app's one handler answers it with its status, code and headers, and
/metrics counts it under its code."""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.responses import Response

from ..errors import ArgsError

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
               413: "invalid_request_error", 499: "cancelled", 500: "server_error", 503: "service_unavailable", 504: "timeout_error"}


def error_json(e: BaseException | str, status: int, param: str | None, code: str | None) -> str:
    """{"error": {"message", "type", "param", "code"}}, as OpenAI (and vLLM) send it."""
    return json.dumps({"error": {"message": str(e), "type": ERROR_TYPES.get(status, "error"), "param": param, "code": code}})


def error_response(message: str, status: int, param: str | None = None, code: str | None = None,
                   headers: Mapping[str, str] | None = None) -> Response:
    """An OpenAI error object as an HTTP response."""
    return Response(error_json(message, status, param, code), status_code=status, media_type="application/json", headers=headers)


class Refused(HTTPException, ArgsError):
    """A request the server turns away (or ends) by one of its rules. `code` is the OpenAI error code and the reason
    /metrics counts it under (args_refusals_total{reason}); `outcome` its args_requests_total outcome."""

    status = 400
    code = "refused"
    outcome = "refused"

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(self.status, message, headers)

    def __str__(self) -> str:
        return str(self.detail)

    def response(self) -> Response:
        return error_response(self.detail, self.status_code, None, self.code, self.headers)

    def event_json(self) -> str:
        """The error as a stream's last event carries it (the 200 went out before the rule applied)."""
        return error_json(self.detail, self.status_code, None, self.code)
