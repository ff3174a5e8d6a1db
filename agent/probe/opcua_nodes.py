"""The OPC UA probe's output: nodes read once, or a browsed tree, as a table with types and values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from asyncua import ua
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames

from agent.probe.common import print_table
from agent.sources.opcua.link import Link, Point
from agent.sources.opcua.values import NODE_INVALID, UnusableValue, describe, scalar, status_name

SERVER_OBJECT = ua.NodeId.from_string("i=2253")
OBJECTS = ua.NodeId.from_string("i=85")


def _node_text(nodeid: ua.NodeId, namespaces: Sequence[str], uris: bool) -> str:
    text = nodeid.to_string()
    if uris and nodeid.NamespaceIndex and nodeid.NamespaceIndex < len(namespaces):
        text = text.replace(f"ns={nodeid.NamespaceIndex};", f"nsu={namespaces[nodeid.NamespaceIndex]};", 1)
    return text


def _value(dv: ua.DataValue | None, enums: dict[int, str] | None = None) -> str:
    if dv is None:
        return ""
    status = status_name(dv.StatusCode)
    if status != "Good":
        return f"BAD: {describe(status)}" if status in NODE_INVALID else f"BAD: {status}"
    raw = dv.Value.Value if dv.Value is not None else None
    if raw is None:
        return "null"
    if isinstance(raw, list):
        shown = ", ".join(str(v) for v in raw[:8])
        return f"[{shown}{', ...' if len(raw) > 8 else ''}] ({len(raw)} values: add index: to pick one)"
    try:
        value = scalar(raw)
    except UnusableValue as exc:
        return f"({exc})"
    text = f"{value:.7g}" if isinstance(value, float) else str(value)
    if enums and isinstance(value, int) and value in enums:
        text += f" ({enums[value]})"
    return text


@dataclass
class _Types:
    """Data type names (and enumeration values), read from the server once each."""

    link: Link
    names: dict[ua.NodeId, str]
    enums: dict[ua.NodeId, dict[int, str]]

    async def name(self, datatype: ua.NodeId) -> str:
        if datatype not in self.names:
            if datatype.NamespaceIndex == 0 and isinstance(datatype.Identifier, int):
                self.names[datatype] = ObjectIdNames.get(datatype.Identifier, datatype.to_string())
            else:
                node = self.link.client.get_node(datatype)
                try:
                    self.names[datatype] = (await node.read_browse_name()).Name or datatype.to_string()
                    definition = await node.read_data_type_definition()
                except Exception:
                    definition = None
                    self.names.setdefault(datatype, datatype.to_string())
                if isinstance(definition, ua.EnumDefinition):
                    self.enums[datatype] = {int(f.Value): str(f.Name) for f in definition.Fields}
        return self.names[datatype]


async def _attributes(link: Link,
                      nodes: Sequence[ua.NodeId]) -> tuple[list[ua.DataValue], list[ua.DataValue]]:
    """(Value, DataType) of each node."""
    by_key = {str(i): n for i, n in enumerate(nodes)}
    values = await link.read(by_key)
    types = await link.read(by_key, AttributeIds.DataType)
    return [values[k] for k in by_key], [types[k] for k in by_key]


async def read(link: Link, points: Sequence[Point], roles: dict[str, list[str]], uris: bool,
                out: TextIO) -> int:
    nodes, failed = await link.resolve(points)
    values, types = await _attributes(link, list(nodes.values()))
    found = dict(zip(nodes, zip(values, types, strict=True), strict=True))
    catalog = _Types(link, {}, {})
    rows = [["role", "tag", "NodeId", "data type", "value", "source time"]] if roles else \
        [["node", "NodeId", "data type", "value", "source time"]]
    for p in points:
        role = [", ".join(roles.get(p.key, ["-"]))] if roles else []
        if p.key in failed:
            rows.append([*role, p.address, "-", "-", f"BAD: {failed[p.key]}", ""])
            continue
        dv, dtype = found[p.key]
        datatype = dtype.Value.Value if dtype.Value is not None else None
        type_name = await catalog.name(datatype) if isinstance(datatype, ua.NodeId) else "-"
        stamp = dv.SourceTimestamp.isoformat(timespec="milliseconds") if dv.SourceTimestamp else ""
        rows.append([*role, p.address, _node_text(nodes[p.key], link.namespaces, uris), type_name,
                     _value(dv, catalog.enums.get(datatype) if datatype else None), stamp])
    print_table(rows, out)
    bad = len(failed) + sum(1 for dv, _ in found.values() if status_name(dv.StatusCode) != "Good")
    return 1 if bad else 0


async def browse(link: Link, point: Point, start: str, depth: int, limit: int, uris: bool,
                 out: TextIO) -> int:
    """The tree below `point` (given as `start`), `depth` levels deep, at most `limit` nodes."""
    nodes, failed = await link.resolve([point])
    if failed:
        print(f"{start} {failed[point.key]}", file=out)
        return 1
    root = link.client.get_node(nodes[point.key])
    with link.mapped():
        entries = [(0, root.nodeid, (await root.read_browse_name()).to_string(),
                    (await root.read_node_class()).name)]
        skipped = await _walk(root, 1, depth, limit, entries, skip_server=root.nodeid == OBJECTS)
    variables = [e[1] for e in entries if e[3] == "Variable"]
    values, types = await _attributes(link, variables)
    attrs = dict(zip(variables, zip(values, types, strict=True), strict=True))
    catalog = _Types(link, {}, {})
    rows = [["NodeId", "browse name", "class", "data type", "value"]]
    for level, nodeid, name, cls in entries:
        dv, dtype = attrs.get(nodeid, (None, None))
        datatype = dtype.Value.Value if dtype is not None and dtype.Value is not None else None
        type_name = await catalog.name(datatype) if isinstance(datatype, ua.NodeId) else ""
        rows.append(["  " * level + _node_text(nodeid, link.namespaces, uris), name, cls, type_name,
                     _value(dv, catalog.enums.get(datatype) if datatype else None)])
    print_table(rows, out)
    if skipped:
        print(f"\n({skipped})", file=out)
    print("\nIn the tag map: {node: \"<NodeId>\"}, or {path: \"Objects/2:Name/2:Child\"} with the browse "
          "names; nsu=<namespace URI> (--uris) keeps working when the server renumbers its namespaces.",
          file=out)
    return 0


Entry = tuple[int, ua.NodeId, str, str]  # level, node, browse name, node class


async def _walk(node: Node, level: int, depth: int, limit: int, entries: list[Entry],
                skip_server: bool = False) -> str:
    """Depth-first below `node`, children in the server's order; returns a note on what was left out."""
    note = ""
    if level > depth:
        return note
    for ref in await node.get_children_descriptions():
        if len(entries) >= limit:
            return f"stopped after {limit} nodes: raise --max or browse from a deeper node"
        target = ref.NodeId
        child = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
        if skip_server and child == SERVER_OBJECT:
            note = "the Server object (i=2253) is left out: browse from i=2253 to see it"
            continue
        entries.append((level, child, ref.BrowseName.to_string(), ref.NodeClass.name))
        note = await _walk(node.new_node(node.session, child), level + 1, depth, limit, entries) or note
    return note
