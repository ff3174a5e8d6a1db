"""NodeId strings and browse paths as a technician writes them: parsing, and namespace resolution.

Pure code, no asyncua: the config loader uses it to check a tag map before anything connects.
A namespace is kept as written (an index, or a URI) and resolved against the server's namespace
array at every connect, because a server may renumber its namespaces when it restarts.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

Namespace = int | str  # an index (ns=2, 2:Name) or a URI (nsu=urn:oven:plc, <urn:oven:plc>Name)

_NODE_ID = re.compile(r"^(?:(?:ns=(?P<ns>\d+)|nsu=(?P<nsu>[^;]+));)?(?P<kind>[isgb])=(?P<id>.+)$", re.DOTALL)
_INDEXED = re.compile(r"^(\d+):(.+)$")
_MAX_UINT32 = 2**32 - 1


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A parsed NodeId: `kind` is i (numeric), s (string), g (GUID) or b (opaque, base64)."""

    namespace: Namespace
    kind: str
    identifier: int | str

    def text(self, index: int | None = None) -> str:
        """The NodeId string with namespace index `index` (or as written, when None)."""
        ns = self.namespace if index is None else index
        prefix = "" if ns == 0 else (f"ns={ns};" if isinstance(ns, int) else f"nsu={ns};")
        return f"{prefix}{self.kind}={self.identifier}"


@dataclass(frozen=True, slots=True)
class PathRef:
    """A parsed browse path from the Root folder: (namespace, browse name) per step."""

    steps: tuple[tuple[Namespace, str], ...]

    def text(self) -> str:
        return "/".join(_step_text(ns, name) for ns, name in self.steps)


def _step_text(ns: Namespace, name: str) -> str:
    if isinstance(ns, str):
        return f"<{ns}>{name}"
    return name if ns == 0 else f"{ns}:{name}"


def parse_node_id(text: str) -> NodeRef:
    """`ns=2;s=Oven02.State`, `nsu=urn:oven:plc;s=...`, `i=2258`, `ns=3;i=1001`, `g=...`, `b=...`."""
    match = _NODE_ID.match(text.strip())
    if not match:
        raise ValueError("is not a NodeId: write it like ns=2;s=Oven02.State, ns=3;i=1001 or "
                         "nsu=urn:oven:plc;s=Oven02.State")
    namespace: Namespace = int(match["ns"]) if match["ns"] is not None else (match["nsu"] or 0)
    if isinstance(namespace, int) and namespace > 65535:
        raise ValueError("has a namespace index above 65535")
    kind, raw = match["kind"], match["id"]
    identifier: int | str = raw
    if kind == "i":
        if not raw.isdigit() or int(raw) > _MAX_UINT32:
            raise ValueError("has a numeric identifier (i=) that is not a number from 0 to 4294967295")
        identifier = int(raw)
    elif kind == "g":
        try:
            identifier = str(uuid.UUID(raw))
        except ValueError:
            raise ValueError("has a GUID identifier (g=) that is not a GUID") from None
    elif kind == "b":
        try:
            base64.b64decode(raw, validate=True)
        except ValueError:
            raise ValueError("has an opaque identifier (b=) that is not base64") from None
    return NodeRef(namespace, kind, identifier)


def parse_browse_path(text: str) -> PathRef:
    """`Objects/2:Oven02/2:GoodParts`, or with namespace URIs: `Objects/<urn:oven:plc>Oven02/...`.

    A step without a prefix is in namespace 0 (Objects, Server...). A leading `/` or `Root/` is
    allowed. A URI in `<...>` may contain slashes.
    """
    segments = _split_path(text.strip().lstrip("/"))
    if not segments or any(not s.strip() for s in segments):
        raise ValueError("is not a browse path: write it like Objects/2:Oven02/2:GoodParts")
    steps = [_parse_step(s.strip()) for s in segments]
    if steps[0] == (0, "Root"):
        steps = steps[1:]
    if not steps:
        raise ValueError("is not a browse path: it names no node below Root")
    return PathRef(tuple(steps))


def _split_path(body: str) -> list[str]:
    """Split at `/`, except inside a `<namespace URI>`."""
    segments: list[str] = []
    current: list[str] = []
    depth = 0
    for char in body:
        if char == "/" and depth == 0:
            segments.append("".join(current))
            current = []
            continue
        depth += {"<": 1, ">": -1}.get(char, 0)
        current.append(char)
    segments.append("".join(current))
    return segments


def _parse_step(segment: str) -> tuple[Namespace, str]:
    if segment.startswith("<"):
        uri, _, name = segment[1:].partition(">")
        if not uri or not name:
            raise ValueError(f"has a step {segment!r} without a namespace URI or a name: write <urn:x>Name")
        return uri, name
    match = _INDEXED.match(segment)
    if match:
        return int(match.group(1)), match.group(2)
    return 0, segment


def resolve_namespace(ns: Namespace, namespaces: Sequence[str]) -> int:
    """The index of a namespace on this server; raises LookupError for an unknown URI."""
    if isinstance(ns, int):
        return ns
    try:
        return list(namespaces).index(ns)
    except ValueError:
        raise LookupError(f"the server has no namespace {ns}") from None
