"""One session with an OPC UA server, on a fresh asyncua client: open, resolve, read, watch, close.

A Link is used once: when anything fails it is closed (bounded in time, even if the server hangs)
and the source builds a new one. The subscription is driven directly through the session's
services (not asyncua's Subscription class), so that no asyncua watchdog re-creates it behind the
source's back, and so that each publish response reaches the source as one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds

from agent.sources.base import TagBinding
from agent.sources.opcua.config import OpcUaConnection, OpcUaTag
from agent.sources.opcua.errors import LinkError, link_error
from agent.sources.opcua.nodes import NodeRef, PathRef, parse_browse_path, parse_node_id, resolve_namespace
from agent.sources.opcua.security import Credentials, Trust, new_client, secure
from agent.sources.opcua.values import describe

log = logging.getLogger(__name__)

CHUNK = 500  # nodes per Read / CreateMonitoredItems / TranslateBrowsePaths request (servers cap these)
CLOSE_TIMEOUT = 2.0  # a dead server gets this long to acknowledge CloseSession, then the socket goes
CLOCK = ua.NodeId.from_string("i=2258")  # Server_ServerStatus_CurrentTime: changes every second
ROOT = ua.NodeId.from_string("i=84")
HIERARCHICAL = ua.NodeId.from_string("i=33")  # HierarchicalReferences
CLOCK_HANDLE = 1
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Point:
    """A tag to read: its key, where it is (as written), and the array element it takes."""

    key: str
    ref: NodeRef | PathRef
    index: int | None
    address: str

    @classmethod
    def of(cls, binding: TagBinding) -> Point:
        tag = binding.spec
        assert isinstance(tag, OpcUaTag)
        ref = parse_node_id(tag.node) if tag.node is not None else parse_browse_path(tag.path or "")
        return cls(binding.key, ref, tag.index, tag.address)


def _element(ns: int, name: str) -> ua.RelativePathElement:
    # asyncua annotates flags with its marker class ua.Boolean; it encodes plain bools.
    fields: dict[str, Any] = {"ReferenceTypeId": HIERARCHICAL, "IsInverse": False, "IncludeSubtypes": True,
                              "TargetName": ua.QualifiedName(name, ns)}
    return ua.RelativePathElement(**fields)


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


class Link:
    """A session with one server; every method raises LinkError when the session cannot go on."""

    def __init__(self, cfg: OpcUaConnection, creds: Credentials, trust: Trust) -> None:
        self.cfg = cfg
        self.creds = creds
        self.trust = trust
        self.client = new_client(cfg)
        self.namespaces: list[str] = []
        self.server_certificate: bytes | None = None
        self.stale_after = cfg.stale_after
        self.last_data = time.monotonic()
        self.clock = True  # the server reports its clock: silence means a dead subscription
        self._queue: asyncio.Queue[ua.PublishResult | None] = asyncio.Queue(maxsize=256)
        self._lost: LinkError | None = None
        self._sub_id: int | None = None
        self._next_handle = CLOCK_HANDLE + 1
        self._keys: dict[int, str] = {}  # client handle -> point key
        self._items: dict[str, int] = {}  # point key -> monitored item id on the server

    # ------------------------------------------------------------------------- life cycle

    @contextlib.contextmanager
    def mapped(self) -> Iterator[None]:
        """asyncua's exceptions, as one LinkError that says what to do."""
        try:
            yield
        except LinkError:
            raise
        except Exception as exc:
            log.debug("OPC UA request to %s failed", self.cfg.url, exc_info=True)
            raise link_error(exc, self.cfg.url, anonymous=self.cfg.auth == "anonymous",
                             certificate=self.cfg.certificate, timeout=self.cfg.timeout) from None

    async def open(self) -> None:
        with self.mapped():
            # Connecting takes a few round trips (endpoints, hello, channel, session, activation).
            async with asyncio.timeout(self.cfg.timeout * 3):
                self.server_certificate = await secure(self.client, self.cfg, self.creds, self.trust)
                await self.client.connect()
                self.client.connection_lost_callback = self._on_lost
                self.namespaces = list(await self.client.get_namespace_array())

    async def _on_lost(self, exc: Exception) -> None:
        """asyncua's keep-alive (a read of the server state every `keepalive`) failed."""
        self._lost = link_error(exc, self.cfg.url, timeout=self.cfg.keepalive)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def close(self) -> None:
        """End the session; never raises, never takes much longer than CLOSE_TIMEOUT."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.client.disconnect()
        except Exception:
            log.debug("closing the session with %s failed", self.cfg.url, exc_info=True)
        finally:
            # If CloseSession hung, drop the socket anyway; the server forgets the session later.
            self.client.uaclient.disconnect_socket()

    # ------------------------------------------------------------------------- nodes

    async def resolve(self, points: Sequence[Point]) -> tuple[dict[str, ua.NodeId], dict[str, str]]:
        """NodeIds of the points on this server (namespace URIs and browse paths resolved now),
        and, for those that cannot be resolved, why."""
        nodes: dict[str, ua.NodeId] = {}
        failed: dict[str, str] = {}
        paths: list[tuple[Point, ua.BrowsePath]] = []
        for p in points:
            try:
                if isinstance(p.ref, NodeRef):
                    nodes[p.key] = ua.NodeId.from_string(p.ref.text(resolve_namespace(p.ref.namespace,
                                                                                       self.namespaces)))
                else:
                    paths.append((p, self._browse_path(p.ref)))
            except LookupError as exc:
                failed[p.key] = f"cannot be found: {exc}"
        for chunk in _chunks(paths):
            with self.mapped():
                results = await self.client.uaclient.translate_browsepaths_to_nodeids([bp for _, bp in chunk])
            for (p, _), result in zip(chunk, results, strict=True):
                if result.StatusCode.is_good() and result.Targets:
                    target = result.Targets[0].TargetId
                    nodes[p.key] = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
                else:
                    failed[p.key] = describe(result.StatusCode.name)
        return nodes, failed

    def _browse_path(self, ref: PathRef) -> ua.BrowsePath:
        elements = [_element(resolve_namespace(ns, self.namespaces), name) for ns, name in ref.steps]
        return ua.BrowsePath(StartingNode=ROOT, RelativePath=ua.RelativePath(Elements=elements))

    async def read(self, nodes: Mapping[str, ua.NodeId],
                   attribute: AttributeIds = AttributeIds.Value) -> dict[str, ua.DataValue]:
        """The current value (or another attribute) of each node, by key (one Read per CHUNK nodes)."""
        out: dict[str, ua.DataValue] = {}
        items = list(nodes.items())
        for chunk in _chunks(items):
            params = ua.ReadParameters(
                MaxAge=0, TimestampsToReturn=ua.TimestampsToReturn.Both,
                NodesToRead=[ua.ReadValueId(NodeId=n, AttributeId=attribute) for _, n in chunk])
            with self.mapped():
                results = await self.client.uaclient.read(params)
            out.update(zip((k for k, _ in chunk), results, strict=True))
        return out

    # ------------------------------------------------------------------------- subscription

    async def watch(self, nodes: Mapping[str, ua.NodeId]) -> dict[str, str]:
        """Add monitored items for the nodes; returns, for those the server refused, why."""
        if self._sub_id is None:
            await self._subscribe()
        requests: list[tuple[str, int, ua.MonitoredItemCreateRequest]] = []
        for key, nodeid in nodes.items():
            handle, self._next_handle = self._next_handle, self._next_handle + 1
            self._keys[handle] = key  # before the request: a notification may come before the answer
            requests.append((key, handle, self._item(nodeid, handle, self.cfg.sampling)))
        failed: dict[str, str] = {}
        for chunk in _chunks(requests):
            results = await self._create_items([r for _, _, r in chunk])
            for (key, handle, _), result in zip(chunk, results, strict=True):
                if result.StatusCode.is_good():
                    self._items[key] = result.MonitoredItemId
                else:
                    del self._keys[handle]
                    failed[key] = describe(result.StatusCode.name)
        return failed

    async def unwatch(self, keys: Sequence[str]) -> None:
        ids = [self._items.pop(k) for k in keys if k in self._items]
        self._keys = {h: k for h, k in self._keys.items() if k not in keys}
        if ids and self._sub_id is not None:
            params = ua.DeleteMonitoredItemsParameters(SubscriptionId=self._sub_id, MonitoredItemIds=ids)
            with self.mapped():
                await self.client.uaclient.session.delete_monitored_items(params)

    async def _subscribe(self) -> None:
        publishing = self.cfg.publishing_interval
        keepalive = max(1, math.ceil(self.cfg.keepalive / publishing))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=publishing * 1000,
            RequestedLifetimeCount=max(3 * keepalive, math.ceil(self.cfg.session_timeout / publishing)),
            RequestedMaxKeepAliveCount=keepalive, MaxNotificationsPerPublish=0, PublishingEnabled=True,
            Priority=0)
        with self.mapped():
            result = await self.client.uaclient.session.create_subscription(params, self._on_publish)
        self._sub_id = result.SubscriptionId
        revised = result.RevisedPublishingInterval / 1000
        if revised > publishing:
            log.debug("%s revised the publishing interval to %gs", self.cfg.url, revised)
        # The clock changes every second whatever the tag map holds: silence means a dead subscription.
        self.stale_after = max(self.cfg.stale_after, 3 * revised)
        self.last_data = time.monotonic()
        (clock,) = await self._create_items([self._item(CLOCK, CLOCK_HANDLE, 1.0)])
        if not clock.StatusCode.is_good():
            # Rare, but then any publish response, keep-alives included, is the sign of life.
            log.debug("%s refused to monitor its clock (%s)", self.cfg.url, clock.StatusCode.name)
            self.clock = False

    def _item(self, nodeid: ua.NodeId, handle: int, sampling: float) -> ua.MonitoredItemCreateRequest:
        params = ua.MonitoringParameters(ClientHandle=handle, SamplingInterval=sampling * 1000,
                                         QueueSize=self.cfg.queue_size, DiscardOldest=True)
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=nodeid, AttributeId=AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=params)

    async def _create_items(
        self, items: list[ua.MonitoredItemCreateRequest]
    ) -> list[ua.MonitoredItemCreateResult]:
        assert self._sub_id is not None
        params = ua.CreateMonitoredItemsParameters(SubscriptionId=self._sub_id, ItemsToCreate=items,
                                                   TimestampsToReturn=ua.TimestampsToReturn.Both)
        with self.mapped():
            return await self.client.uaclient.session.create_monitored_items(params)

    async def _on_publish(self, result: ua.PublishResult) -> None:
        # Waiting here holds asyncua's publish loop: if the source falls behind, the server queues.
        await self._queue.put(result)

    async def changes(self, wait: float) -> list[tuple[str, ua.DataValue]]:
        """The values delivered since the last call (waiting up to `wait` seconds for some), in order.

        Raises LinkError when the connection is lost, the server ends the subscription, or the
        subscription has delivered nothing, not even the server's clock, for `stale_after`.
        """
        results: list[ua.PublishResult | None] = []
        try:
            async with asyncio.timeout(wait):  # cheaper than wait_for: no task per call
                results.append(await self._queue.get())
        except TimeoutError:
            pass
        while not self._queue.empty():
            results.append(self._queue.get_nowait())
        out: list[tuple[str, ua.DataValue]] = []
        data = False
        for result in results:
            if result is not None:
                data = self._unpack(result, out) or data or not self.clock
        if self._lost is not None:
            raise self._lost
        now = time.monotonic()
        if data:
            self.last_data = now
        elif now - self.last_data > self.stale_after:
            raise LinkError(f"The OPC UA server at {self.cfg.url} sent nothing for {self.stale_after:g}s, "
                            "not even its clock: the subscription is taken as dead")
        return out

    def _unpack(self, result: ua.PublishResult, out: list[tuple[str, ua.DataValue]]) -> bool:
        data = False
        for notification in result.NotificationMessage.NotificationData or []:
            if isinstance(notification, ua.DataChangeNotification):
                for item in notification.MonitoredItems:
                    data = True
                    key = self._keys.get(item.ClientHandle)
                    if key is not None:
                        out.append((key, item.Value))
            elif isinstance(notification, ua.StatusChangeNotification) and self._lost is None:
                self._lost = LinkError(f"The OPC UA server at {self.cfg.url} ended the subscription "
                                       f"({notification.Status.name})")
        return data
