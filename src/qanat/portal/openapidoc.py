"""OpenAPI documents of catalogue entries: parse, check, summarise (pure).

An uploaded document is kept exactly as uploaded (JSON or YAML) so that the
download is the operator's file; this module decides whether to accept it
and, for the portal's ``openapi`` view, reads its operations.

The check is structural, not a full schema validation: the text parses, is
a mapping with an ``openapi: 3.x`` or ``swagger: "2.0"`` version, an
``info`` mapping with a ``title`` and a ``version``, and a ``paths`` mapping
whose keys start with ``/``. That is what the portal needs to show it and
what catches the usual mistakes (the wrong file, a truncated upload, a
Postman collection).

YAML is read with the safe loader, and documents with YAML aliases
(``*name``) are refused: an alias bomb expands to gigabytes when walked.
This module is the only importer of PyYAML.

Raises (everywhere): :class:`~qanat.errors.TooLarge` over the size limit,
:class:`~qanat.errors.InvalidInput` for everything else that is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qanat.errors import InvalidInput, TooLarge

#: The default largest document accepted (PortalConfig.openapi_max_bytes).
DEFAULT_MAX_BYTES = 512 * 1024
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_MAX_NODES = 200_000


@dataclass(frozen=True, slots=True)
class CheckedDocument:
    """An accepted document: its text as uploaded and what it says about itself."""

    text: str
    format: str  # "json" or "yaml"
    spec: str  # "OpenAPI 3.1.0" or "Swagger 2.0"
    title: str
    version: str


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    where: str
    required: bool
    type: str
    description: str


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    summary: str
    description: str
    operation_id: str
    tags: tuple[str, ...]
    parameters: tuple[Parameter, ...]
    request_types: tuple[str, ...]
    responses: tuple[tuple[str, str], ...]  # (status, description)


@dataclass(frozen=True, slots=True)
class ApiSummary:
    """What the ``openapi`` view shows of a document."""

    spec: str
    title: str
    version: str
    description: str
    servers: tuple[str, ...]
    operations: tuple[Operation, ...]


def check(raw: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES, what: str) -> CheckedDocument:
    """Accept ``raw`` as an OpenAPI document, or say what is wrong with it.

    Args:
        raw: the uploaded bytes (UTF-8) or text.
        max_bytes: the size limit, in bytes of UTF-8.
        what: names the document in messages (``the OpenAPI document of
            secure-gateway:8081``).

    Raises:
        TooLarge: over ``max_bytes``.
        InvalidInput: not UTF-8, not JSON/YAML, or not an OpenAPI document.
    """
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if len(data) > max_bytes:
        raise TooLarge(
            f"{what} has {len(data)} bytes, over the limit of {max_bytes} bytes"
            " (openapi_max_bytes); upload a smaller file, or give a link to it instead"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"{what} is not UTF-8 text; save it as UTF-8 JSON or YAML") from None
    if not text.strip():
        raise InvalidInput(f"{what} is empty; upload the JSON or YAML file of the API")
    doc, fmt = _parse(text, what)
    spec = _spec(doc, what)
    info = doc.get("info")
    if not isinstance(info, Mapping):
        raise InvalidInput(f"{what} has no 'info' object; an OpenAPI document starts with one")
    title, version = info.get("title"), info.get("version")
    if not isinstance(title, str) or not title.strip():
        raise InvalidInput(f"{what} has no info.title; give the API a title")
    if not isinstance(version, (str, int, float)) or not str(version).strip():
        raise InvalidInput(f"{what} has no info.version; give the API a version")
    paths = doc.get("paths")
    if not isinstance(paths, Mapping):
        raise InvalidInput(
            f"{what} has no 'paths' object; it must list the API's paths (it may be empty: {{}})"
        )
    for key in paths:
        if not isinstance(key, str) or not key.startswith("/"):
            raise InvalidInput(f"{what}: path {key!r} must start with '/'")
    return CheckedDocument(text, fmt, spec, title.strip(), str(version).strip())


def summarize(text: str) -> ApiSummary:
    """The operations of a document accepted by :func:`check`, for people to read."""
    doc, _ = _parse(text, "the stored OpenAPI document")
    info = doc.get("info") if isinstance(doc.get("info"), Mapping) else {}
    assert isinstance(info, Mapping)
    operations: list[Operation] = []
    paths = doc.get("paths")
    for path, item in paths.items() if isinstance(paths, Mapping) else ():
        if not isinstance(item, Mapping):
            continue
        shared = _parameters(item.get("parameters"))
        for method in HTTP_METHODS:
            op = item.get(method)
            if not isinstance(op, Mapping):
                continue
            operations.append(
                Operation(
                    method=method.upper(),
                    path=str(path),
                    summary=_text(op.get("summary")),
                    description=_text(op.get("description")),
                    operation_id=_text(op.get("operationId")),
                    tags=tuple(_text(t) for t in _list(op.get("tags"))),
                    parameters=shared + _parameters(op.get("parameters")),
                    request_types=_request_types(op),
                    responses=tuple(
                        (str(code), _text(r.get("description")) if isinstance(r, Mapping) else "")
                        for code, r in (
                            op["responses"].items()
                            if isinstance(op.get("responses"), Mapping)
                            else ()
                        )
                    ),
                )
            )
    servers = tuple(
        _text(s.get("url")) for s in _list(doc.get("servers")) if isinstance(s, Mapping)
    )
    if not servers and isinstance(doc.get("host"), str):  # Swagger 2.0
        servers = (f"{doc['host']}{_text(doc.get('basePath'))}",)
    return ApiSummary(
        spec=_spec(doc, "the stored OpenAPI document"),
        title=_text(info.get("title")),
        version=_text(info.get("version")),
        description=_text(info.get("description")),
        servers=servers,
        operations=tuple(operations),
    )


# -- parsing -----------------------------------------------------------------------


def _parse(text: str, what: str) -> tuple[Mapping[str, Any], str]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        fmt = "json"
    else:
        doc = _load_yaml(text, what)
        fmt = "yaml"
    if not isinstance(doc, Mapping):
        raise InvalidInput(
            f"{what} is a {type(doc).__name__}, not an object; an OpenAPI document is a"
            " mapping with 'openapi', 'info' and 'paths'"
        )
    _bounded(doc, what)
    return doc, fmt


def _load_yaml(text: str, what: str) -> Any:
    import yaml  # only here: the portal's pages and API import this module lazily

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        for token in yaml.scan(text, Loader=loader):
            if isinstance(token, (yaml.AliasToken, yaml.AnchorToken)):
                raise InvalidInput(
                    f"{what} uses YAML anchors or aliases (&name / *name), which are not"
                    " accepted; expand them, or upload the JSON form"
                )
        return yaml.load(text, Loader=loader)  # noqa: S506 - the safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput(f"{what} is neither JSON nor valid YAML: {problem}{where}") from None


def _bounded(doc: Any, what: str) -> None:
    # Bound the walk of the renderer and of json.dumps (no recursion).
    stack: list[Any] = [doc]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > _MAX_NODES:
            raise InvalidInput(f"{what} has more than {_MAX_NODES} values; split the API")
        if isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _spec(doc: Mapping[str, Any], what: str) -> str:
    openapi, swagger = doc.get("openapi"), doc.get("swagger")
    if isinstance(openapi, str) and openapi.startswith("3."):
        return f"OpenAPI {openapi}"
    if str(swagger) == "2.0":
        return "Swagger 2.0"
    found = f" (it says openapi: {openapi!r})" if openapi is not None else ""
    raise InvalidInput(
        f"{what} is not an OpenAPI document: it needs 'openapi: 3.x' or 'swagger: \"2.0\"'"
        f" at the top{found}"
    )


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _parameters(value: Any) -> tuple[Parameter, ...]:
    found: list[Parameter] = []
    for p in _list(value):
        if not isinstance(p, Mapping):
            continue
        if "$ref" in p:
            found.append(Parameter(_text(p["$ref"]).rsplit("/", 1)[-1], "ref", False, "", ""))
            continue
        schema = p.get("schema") if isinstance(p.get("schema"), Mapping) else p
        assert isinstance(schema, Mapping)
        found.append(
            Parameter(
                name=_text(p.get("name")),
                where=_text(p.get("in")),
                required=bool(p.get("required", False)),
                type=_text(schema.get("type")),
                description=_text(p.get("description")),
            )
        )
    return tuple(found)


def _request_types(op: Mapping[str, Any]) -> tuple[str, ...]:
    body = op.get("requestBody")
    if isinstance(body, Mapping) and isinstance(body.get("content"), Mapping):
        return tuple(str(k) for k in body["content"])
    consumes = op.get("consumes")  # Swagger 2.0
    return tuple(str(c) for c in _list(consumes))
