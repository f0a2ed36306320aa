"""Helpers shared by resources: the JSON body hook and query-string parsing."""

from __future__ import annotations

from datetime import date
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

import falcon
from pydantic import BaseModel, ValidationError

from mpi.api.errors import Problem
from mpi.domain.errors import FieldProblem, InvalidInput, MalformedInput, reject_duplicate_keys
from mpi.domain.patient import problems_from

MAX_BODY_BYTES = 1024 * 1024
JSON_TYPES = ("application/json",)


def json_body(req: falcon.Request, resp: falcon.Response, resource: Any,
              params: dict[str, Any]) -> None:
    """Falcon ``before`` hook: a JSON body of at most 1 MiB, left as bytes in ``req.context.body``.

    415 for another content type, 413 past the limit (declared or actual).
    """
    content_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if content_type not in JSON_TYPES and not content_type.endswith("+json"):
        raise Problem(falcon.HTTP_415, "Unsupported media type",
                      "send the body as application/json")
    req.context.body = read_body(req)


def read_body(req: falcon.Request) -> bytes:
    """The request's body, at most 1 MiB (413 past it, declared or actual), not empty
    (400)."""
    if req.content_length is not None and req.content_length > MAX_BODY_BYTES:
        raise Problem(falcon.HTTP_413, "Content too large",
                      f"the body may be at most {MAX_BODY_BYTES} bytes")
    # Without Content-Length (chunked transfer) the server's input ends at the body's end.
    stream = req.bounded_stream if req.content_length is not None else req.stream
    body = stream.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise Problem(falcon.HTTP_413, "Content too large",
                      f"the body may be at most {MAX_BODY_BYTES} bytes")
    if not body:
        raise Problem(falcon.HTTP_400, "Malformed request body", "the body is empty")
    return body


def send(resp: falcon.Response, model: BaseModel, status: str = falcon.HTTP_200, *,
         omit_nulls: bool = True) -> None:
    """Serialize ``model`` as the JSON body (absent values left out unless ``omit_nulls``)."""
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = model.model_dump_json(exclude_none=omit_nulls).encode()


def form_decode(raw: str) -> str:
    """One component of a query string or form: ``+`` a space, ``%XX`` a byte, the bytes
    UTF-8 strictly (UnicodeDecodeError otherwise, never replacement characters)."""
    return unquote_to_bytes(raw.replace("+", " ")).decode("utf-8")


def has_control_characters(value: str) -> bool:
    """Whether a query value holds a C0 control character or DEL: none belongs in a search,
    and PostgreSQL refuses NUL."""
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


class Query:
    """Reads query parameters, collecting every problem before failing once (400).

    Strict about the query string as a whole, so that no two readers of one URL (this
    service, a proxy, an audit of the URL) can take it two ways: a parameter given twice,
    given empty (``after=``), or whose bytes are not UTF-8 is refused, naming it, rather
    than read as the last value, as absent, or with replacement characters.
    """

    def __init__(self, req: falcon.Request):
        self._req = req
        self.problems: list[FieldProblem] = []
        self._refused: set[str] = set()
        self._screen(req.query_string)

    def _screen(self, query_string: str) -> None:
        seen: set[str] = set()
        for part in query_string.split("&"):
            if not part:
                continue
            raw_name, _, raw_value = part.partition("=")
            try:
                name = form_decode(raw_name)
            except UnicodeDecodeError:
                self._refuse(raw_name, "is not valid UTF-8")
                continue
            try:
                value = form_decode(raw_value)
            except UnicodeDecodeError:
                self._refuse(name, "is not valid UTF-8 (percent-encode the UTF-8 bytes)")
                continue
            if name in seen:
                self._refuse(name, "is given more than once; give it once")
            elif not value.strip():
                self._refuse(name, "is empty; give a value or leave the parameter out")
            seen.add(name)

    def _refuse(self, name: str, reason: str) -> None:
        if name not in self._refused:
            self._refused.add(name)
            self.problems.append(FieldProblem(name, reason))

    def text(self, name: str, *, required: bool = False, max_length: int = 200) -> str | None:
        if name in self._refused:
            return None
        value = self._req.get_param(name)
        if value is None or not value.strip():
            if required:
                self.problems.append(FieldProblem(name, "is required"))
            return None
        if len(value) > max_length:
            self.problems.append(FieldProblem(name, f"must be at most {max_length} characters"))
            return None
        if has_control_characters(value):
            self.problems.append(FieldProblem(name, "must not contain control characters"))
            return None
        return value.strip()

    def date(self, name: str) -> date | None:
        value = self.text(name, max_length=10)
        if value is None:
            return None
        try:
            if len(value) != 10:
                raise ValueError
            return date.fromisoformat(value)
        except ValueError:
            self.problems.append(FieldProblem(name, "must be a date as YYYY-MM-DD"))
            return None

    def integer(self, name: str, *, default: int | None = None, minimum: int = 0,
                maximum: int = 2**63 - 1) -> int | None:
        value = self.text(name, max_length=20)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.problems.append(FieldProblem(name, "must be a whole number"))
            return default
        if number < minimum or number > maximum:
            bound = f"between {minimum} and {maximum}" if maximum < 2**63 - 1 \
                else f"at least {minimum}"
            self.problems.append(FieldProblem(name, f"must be {bound}"))
            return default
        return number

    def check(self) -> None:
        if self.problems:
            raise Problem(falcon.HTTP_400, "Bad request", "invalid query parameters",
                          errors=self.problems)


M = TypeVar("M", bound=BaseModel)


def parse_json(model: type[M], body: bytes) -> M:
    """Validate a request body into ``model``: 400 when not JSON (or a key is given twice),
    422 naming each bad field."""
    reject_duplicate_keys(body)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errs = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errs):
            raise MalformedInput("the body is not valid JSON") from None
        if len(errs) == 1 and errs[0]["type"] == "model_type":
            raise InvalidInput([FieldProblem("body", "must be a JSON object")]) from None
        raise InvalidInput(problems_from(exc)) from None
