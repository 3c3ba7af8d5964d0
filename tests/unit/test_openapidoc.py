"""OpenAPI documents of the catalogue: accepted, refused with a reason, never a crash."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qanat.errors import InvalidInput, TooLarge
from qanat.portal import openapidoc
from qanat.portal.catalogue import plain_text

WHAT = "the OpenAPI document of secure-gateway:8081"
YAML = """\
openapi: 3.0.3
info: {title: Orders, version: 1.0}
servers: [{url: "https://orders.internal/"}]
paths:
  /orders/{id}:
    parameters: [{name: id, in: path, required: true, schema: {type: string}}]
    get:
      summary: One order
      tags: [orders]
      responses: {"200": {description: the order}, "404": {description: none}}
"""
SWAGGER = {
    "swagger": "2.0",
    "info": {"title": "Legacy", "version": "3"},
    "host": "legacy.internal",
    "basePath": "/v1",
    "paths": {"/x": {"post": {"consumes": ["application/xml"], "responses": {}}}},
}


def test_yaml_and_json_documents_are_accepted_as_uploaded() -> None:
    doc = openapidoc.check(YAML.encode(), what=WHAT)
    assert (doc.format, doc.spec, doc.title, doc.version) == (
        "yaml",
        "OpenAPI 3.0.3",
        "Orders",
        "1.0",
    )
    assert doc.text == YAML
    legacy = openapidoc.check(json.dumps(SWAGGER), what=WHAT)
    assert (legacy.format, legacy.spec) == ("json", "Swagger 2.0")


def test_summary_lists_operations_with_shared_parameters() -> None:
    summary = openapidoc.summarize(YAML)
    [op] = summary.operations
    assert (op.method, op.path, op.summary, op.tags) == (
        "GET",
        "/orders/{id}",
        "One order",
        ("orders",),
    )
    assert [p.name for p in op.parameters] == ["id"]
    assert op.responses == (("200", "the order"), ("404", "none"))
    assert summary.servers == ("https://orders.internal/",)
    legacy = openapidoc.summarize(json.dumps(SWAGGER))
    assert legacy.servers == ("legacy.internal/v1",)
    assert legacy.operations[0].request_types == ("application/xml",)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "is empty"),
        ("- a\n- b\n", "not an object"),
        ("{not json", "not valid JSON"),
        ("a: [\n", "neither JSON nor valid YAML"),
        ("openapi: 3.0.0\npaths: {}\n", "no 'info' object"),
        ("openapi: 3.0.0\ninfo: {version: 1}\npaths: {}\n", "no info.title"),
        ("openapi: 3.0.0\ninfo: {title: t}\npaths: {}\n", "no info.version"),
        ("openapi: 3.0.0\ninfo: {title: t, version: 1}\n", "no 'paths' object"),
        (
            "openapi: 3.0.0\ninfo: {title: t, version: 1}\npaths: {orders: {}}\n",
            "must start with '/'",
        ),
        ("openapi: 4.0.0\ninfo: {title: t, version: 1}\npaths: {}\n", "openapi: '4.0.0'"),
        ("info: {title: t, version: 1}\npaths: {}\n", "is not an OpenAPI document"),
        ("a: &x [1, 2]\nb: [*x, *x]\n", "anchors or aliases"),
    ],
)
def test_what_is_wrong_is_said(text: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=None) as info:
        openapidoc.check(text, what=WHAT)
    assert words in str(info.value)
    assert str(info.value).startswith(WHAT)


def test_the_size_limit_is_named() -> None:
    with pytest.raises(TooLarge, match=r"over the limit of 100 bytes \(openapi_max_bytes\)"):
        openapidoc.check(YAML, max_bytes=100, what=WHAT)
    with pytest.raises(InvalidInput, match="not UTF-8"):
        openapidoc.check(b"\xff\xfe openapi", what=WHAT)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_any_input_is_accepted_or_refused_with_invalid_input(raw: bytes | str) -> None:
    try:
        doc = openapidoc.check(raw, max_bytes=200, what=WHAT)
    except InvalidInput:
        return
    openapidoc.summarize(doc.text)  # an accepted document can always be shown


@pytest.mark.parametrize(
    "text",
    ["<script>x</script>", "see <a href=x>", "a &lt; b", "&#60;b&#62;", "<!-- hi -->", "x</b>"],
)
def test_markup_in_plain_text_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="contains HTML"):
        plain_text(text, "description", 500)


def test_plain_text_keeps_comparisons_and_ampersands() -> None:
    assert plain_text("  latency < 5 ms & load > 1  ", "description", 500) == (
        "latency < 5 ms & load > 1"
    )
    with pytest.raises(InvalidInput, match="at most 5"):
        plain_text("too long", "owner", 5)
    with pytest.raises(InvalidInput, match="control characters"):
        plain_text("bell\x07", "owner", 50)
