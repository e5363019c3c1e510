"""Firecracker's Swagger 2.0 description, read and enforced without third-party packages.

``specs/firecracker-api.yaml`` is a copy of ``/work/shared/specs/firecracker-api.yaml``
(Firecracker's ``src/firecracker/swagger/firecracker.yaml`` at commit 81b38b9,
Apache-2.0); a test checks the copy against the shared one when that exists.

Neither PyYAML nor jsonschema is in the project's virtualenv, so this module carries
the small subset of each that the spec needs:

* :func:`load_yaml`: block mappings and sequences, plain (multi-line), quoted and
  folded/literal block scalars, flow sequences, comments; scalars resolved the way
  PyYAML's ``safe_load`` resolves them (YAML 1.1 booleans, ints, floats, null). A test
  compares it with PyYAML wherever PyYAML can be found.
* :class:`Swagger`: validates a request (path, method, body) and any value against a
  schema: ``type``, ``required``, ``properties``, ``enum``, ``minimum``/``maximum``,
  ``items``, ``$ref`` and ``additionalProperties``. One departure from JSON Schema, on
  purpose: an object schema without ``additionalProperties`` rejects unknown fields,
  because Firecracker's config structs are ``deny_unknown_fields`` and answer 400.
  A schema keyword the validator does not know fails loudly instead of being skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

SPEC_PATH = Path(__file__).with_name("specs") / "firecracker-api.yaml"
SHARED_SPEC_PATH = Path("/work/shared/specs/firecracker-api.yaml")

# --- YAML subset ------------------------------------------------------------------------

_KEY = re.compile(r"""^(?P<key>"[^"]*"|'[^']*'|[^\s"'\[\]{}#,-][^#]*?|-[^\s][^#]*?)\s*:(?:\s+|$)""")
_BOOL = {
    **dict.fromkeys(["yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"], True),
    **dict.fromkeys(["no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"], False),
}
_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")
_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?$")
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "/": "/", "0": "\0", " ": " "}


class YamlError(ValueError):
    pass


def _plain(text: str) -> Any:
    text = text.strip()
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        return int(text.replace("_", ""))
    if _FLOAT.match(text):
        return float(text.replace("_", ""))
    return text


def _unquote(text: str) -> str:
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    out, i, body = [], 0, text[1:-1]
    while i < len(body):
        if body[i] == "\\":
            if body[i + 1] not in _ESCAPES:
                raise YamlError(f"unsupported escape \\{body[i + 1]}")
            out.append(_ESCAPES[body[i + 1]])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def _scalar(text: str) -> Any:
    text = text.strip()
    if text[:1] in ("'", '"'):
        return _unquote(text)
    if text.startswith("["):
        inner = text[1:-1].strip()
        items = re.findall(r"""\s*("[^"]*"|'[^']*'|[^,]+)\s*(?:,|$)""", inner) if inner else []
        return [_scalar(item) for item in items]
    if text.startswith("{"):
        raise YamlError("flow mappings are not supported")
    return _plain(text)


def _fold(lines: list[str]) -> str:
    """Fold lines the YAML way: a line break is a space, an empty line a newline."""
    out = ""
    for line in lines:
        if not line:
            out += "\n"
        elif out and not out.endswith("\n"):
            out += " " + line
        else:
            out += line
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.i = 0

    def peek(self) -> tuple[int, str] | None:
        while self.i < len(self.lines):
            raw = self.lines[self.i]
            content = raw.strip()
            if content and not content.startswith("#"):
                return len(raw) - len(raw.lstrip(" ")), content
            self.i += 1
        return None

    def block(self, parent: int) -> Any:
        nxt = self.peek()
        if nxt is None or (nxt[0] <= parent and not nxt[1].startswith("-")):
            return None
        indent, content = nxt
        if content == "-" or content.startswith("- "):
            return self.sequence(indent)
        if _KEY.match(content):
            return self.mapping(indent)
        self.i += 1  # a scalar on the lines under its key
        return self.value(content, parent)

    def mapping(self, indent: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        while (nxt := self.peek()) and nxt[0] == indent and (m := _KEY.match(nxt[1])):
            self.i += 1
            key = _scalar(m.group("key"))
            if key in out:
                raise YamlError(f"line {self.i}: duplicate key {key!r}")
            out[key] = self.value(nxt[1][m.end() :], indent)
        if nxt and nxt[0] > indent:
            raise YamlError(f"line {self.i + 1}: unexpected indentation")
        return out

    def sequence(self, indent: int) -> list[Any]:
        out: list[Any] = []
        while (nxt := self.peek()) and nxt[0] == indent and (nxt[1] == "-" or nxt[1][:2] == "- "):
            self.i += 1
            rest = nxt[1][1:]
            content = rest.lstrip()
            column = indent + 1 + len(rest) - len(content)
            if not content:
                out.append(self.block(indent))
            elif m := _KEY.match(content):
                item = {_scalar(m.group("key")): self.value(content[m.end() :], column)}
                item.update(self.mapping(column))
                out.append(item)
            else:
                out.append(self.value(content, indent))
        return out

    def continuation(self, indent: int, first: str) -> str:
        """A plain or quoted scalar's further lines (indented deeper than its key)."""
        lines = [first.strip()] if first.strip() else []
        while self.i < len(self.lines):
            raw = self.lines[self.i]
            if raw.strip() and len(raw) - len(raw.lstrip(" ")) <= indent:
                break
            if not raw.strip():  # an empty line is a newline if the scalar goes on
                j = self.i
                while j < len(self.lines) and not self.lines[j].strip():
                    j += 1
                after = self.lines[j] if j < len(self.lines) else ""
                if not after.strip() or len(after) - len(after.lstrip(" ")) <= indent:
                    break
            lines.append(raw.strip())
            self.i += 1
        return _fold(lines)

    def value(self, rest: str, indent: int) -> Any:
        rest = rest.strip()
        if not rest:
            return self.block(indent)
        if rest[0] in "|>":
            return self.block_scalar(rest, indent)
        if rest[0] in "\"'" and not (len(rest) > 1 and rest.endswith(rest[0])):
            return _unquote(self.continuation(indent, rest))
        if rest[0] in "\"'[":
            return _scalar(rest)
        return _plain(self.continuation(indent, rest.split(" #", 1)[0]))

    def block_scalar(self, header: str, indent: int) -> str:
        lines: list[str] = []
        content_indent = None
        while self.i < len(self.lines):
            raw = self.lines[self.i]
            if raw.strip():
                here = len(raw) - len(raw.lstrip(" "))
                if here <= indent:
                    break
                content_indent = here if content_indent is None else content_indent
                lines.append(raw[content_indent:])
            else:
                lines.append("")
            self.i += 1
        while lines and not lines[-1]:
            lines.pop()
        text = _fold(lines) if header[0] == ">" else "\n".join(lines)
        return text if header.endswith("-") else text + "\n"


def load_yaml(text: str) -> Any:
    parser = _Parser(text)
    doc = parser.block(-1)
    if parser.peek() is not None:
        raise YamlError(f"line {parser.i + 1}: unparsed content")
    return doc


# --- Swagger 2.0 validation ----------------------------------------------------------------

_KNOWN = {
    "type",
    "description",
    "properties",
    "$ref",
    "required",
    "format",
    "default",
    "enum",
    "items",
    "minimum",
    "maximum",
    "additionalProperties",
    "readOnly",
    "example",
    "title",
}
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


class Swagger:
    """Checks requests and values against a Swagger 2.0 document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.definitions: dict[str, Any] = doc["definitions"]

    @classmethod
    def load(cls, path: Path = SPEC_PATH) -> Swagger:
        return cls(load_yaml(path.read_text()))

    def definition(self, name: str) -> dict[str, Any]:
        return dict(self.definitions[name])

    def _deref(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/definitions/") or seen > 20:
                raise AssertionError(f"cannot resolve $ref {ref!r}")
            schema, seen = self.definitions[ref.removeprefix("#/definitions/")], seen + 1
        return schema

    def errors(self, schema: dict[str, Any], value: Any, where: str = "body") -> list[str]:
        """Every way ``value`` breaks ``schema``; empty if it conforms."""
        schema = self._deref(schema)
        unknown = set(schema) - _KNOWN
        if unknown:
            raise AssertionError(f"{where}: the validator does not know {sorted(unknown)}")
        kind = schema.get("type", "object" if "properties" in schema else None)
        if kind is not None:
            ok = isinstance(value, _TYPES[kind]) and (kind == "boolean" or type(value) is not bool)
            if not ok:
                return [f"{where}: expected {kind}, got {type(value).__name__} {value!r}"]
        errs: list[str] = []
        if "enum" in schema and value not in schema["enum"]:
            errs.append(f"{where}: {value!r} is not one of {schema['enum']}")
        if "minimum" in schema and value < schema["minimum"]:
            errs.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errs.append(f"{where}: {value} is above the maximum {schema['maximum']}")
        if isinstance(value, dict):
            props = schema.get("properties", {})
            extra = schema.get("additionalProperties", False)
            errs += [
                f"{where}: missing required {k!r}"
                for k in schema.get("required", [])
                if k not in value
            ]
            for key, item in value.items():
                if key in props:
                    errs += self.errors(props[key], item, f"{where}.{key}")
                elif isinstance(extra, dict):
                    errs += self.errors(extra, item, f"{where}.{key}")
                elif extra is not True:
                    errs.append(f"{where}: unknown field {key!r}")
        if isinstance(value, list) and "items" in schema:
            for n, item in enumerate(value):
                errs += self.errors(schema["items"], item, f"{where}[{n}]")
        return errs

    def match(self, path: str) -> tuple[str, dict[str, str]] | None:
        """The spec's path template for ``path`` and its path parameters."""
        parts = path.split("/")
        for template in self.doc["paths"]:
            tparts = template.split("/")
            if len(tparts) != len(parts):
                continue
            params = {}
            for t, p in zip(tparts, parts, strict=True):
                if t.startswith("{") and t.endswith("}") and p:
                    params[t[1:-1]] = p
                elif t != p:
                    break
            else:
                return template, params
        return None

    def request_errors(self, method: str, path: str, body: Any) -> list[str]:
        """Every way a request breaks the spec: path, method, path parameters, body."""
        found = self.match(path)
        if found is None:
            return [f"{method} {path}: no such path in the spec"]
        template, params = found
        op = self.doc["paths"][template].get(method.lower())
        if op is None:
            return [f"{method} {path}: the spec has no {method} on {template}"]
        declared = op.get("parameters", [])
        errs = [
            f"{method} {path}: path parameter {p['name']!r} missing"
            for p in declared
            if p["in"] == "path" and p["name"] not in params
        ]
        body_param = next((p for p in declared if p["in"] == "body"), None)
        if body is None:
            if body_param is not None and body_param.get("required"):
                errs.append(f"{method} {path}: a body is required")
        elif body_param is None:
            errs.append(f"{method} {path}: takes no body")
        else:
            errs += self.errors(body_param["schema"], body, f"{method} {template} body")
        return errs

    def response_errors(self, method: str, template: str, status: int, body: Any) -> list[str]:
        responses = self.doc["paths"][template][method.lower()]["responses"]
        spec = responses.get(status, responses.get("default"))
        if spec is None:
            return [f"{method} {template}: status {status} is not in the spec"]
        if "schema" not in spec:
            return [] if body is None else [f"{method} {template}: {status} has no body"]
        return self.errors(spec["schema"], body, f"{method} {template} {status}")
