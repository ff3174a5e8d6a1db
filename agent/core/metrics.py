"""Prometheus metrics of one agent, in a registry of its own (no module-level state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

P = "prodsmart_edge_"


class Metrics:
    """Every metric the agent exports; each component takes the object and updates its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # sources
        self.readings = Counter(P + "readings", "Readings received", ["connection"], registry=r)
        self.bad_readings = Counter(
            P + "bad_readings", "Readings ignored: bad quality or unusable value",
            ["connection", "reason"], registry=r,
        )
        self.connection_up = Gauge(P + "connection_up", "1 while the connection works", ["connection"],
                                   registry=r)
        self.connection_errors = Counter(P + "connection_errors", "Connection attempts or reads that failed",
                                         ["connection"], registry=r)
        self.poll_overruns = Counter(P + "poll_overruns", "Poll cycles that took longer than the interval",
                                     ["connection"], registry=r)
        self.parse_errors = Counter(P + "payload_errors", "Messages whose payload could not be parsed",
                                    ["connection"], registry=r)
        # logic
        self.set_aside = Counter(
            P + "set_aside", "Readings, events or states set aside because applying or storing them "
            "failed (logged with the reason); everything else goes on", ["what"], registry=r,
        )
        self.counter_resets = Counter(P + "counter_resets", "Counter resets accepted", ["machine", "tag"],
                                      registry=r)
        self.counter_wraps = Counter(P + "counter_wraps", "Counter wraps", ["machine", "tag"], registry=r)
        self.counter_rejected = Counter(P + "counter_jumps_rejected", "Jumps refused by max_rate",
                                        ["machine", "tag"], registry=r)
        self.duplicates = Counter(P + "duplicate_messages",
                                  "Messages dropped as duplicates (delta ids, old totals redelivered)",
                                  ["machine"], registry=r)
        # outbox
        self.queue_depth = Gauge(P + "queue_depth", "Calls waiting to be sent", ["machine"], registry=r)
        self.oldest_pending = Gauge(P + "oldest_pending_seconds", "Age of the oldest waiting call",
                                    ["machine"], registry=r)
        self.count_lag = Gauge(P + "count_lag_seconds",
                               "Age of the oldest part Prodsmart does not have yet (0: it has them all)",
                               ["machine"], registry=r)
        self.dead_letters = Gauge(P + "dead_letters", "Calls Prodsmart refused, kept for review",
                                  registry=r)
        self.db_errors = Counter(P + "storage_errors", "Database operations that failed", registry=r)
        # uplink
        self.calls = Counter(P + "calls", "Calls sent to Prodsmart", ["endpoint", "status"], registry=r)
        self.retries = Counter(P + "retries", "Calls that will be retried", ["endpoint", "reason"],
                               registry=r)
        self.rate_limited = Counter(P + "rate_limit_pauses", "429 answers that paused every lane",
                                    registry=r)
        self.auth_failures = Counter(P + "auth_failures", "401/403 answers", registry=r)
        self.already_delivered = Counter(
            P + "counter_already_delivered",
            "Counter calls refused as not increasing after an unknown outcome, counted as delivered",
            registry=r,
        )
        self.call_latency = Histogram(P + "call_seconds", "Time of one Prodsmart call", ["endpoint"],
                                      registry=r)
        self.lag_at_delivery = Histogram(
            P + "count_lag_at_delivery_seconds",
            "Age of the oldest part a counter call carried when Prodsmart acknowledged it",
            buckets=(1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600, 14400, 86400),
            registry=r)
        self.budget_shared = Gauge(
            P + "budget_shared", "1 while the company budget is shared through Redis, 0 on the fallback",
            registry=r)
        self.budget_fallbacks = Counter(
            P + "budget_fallbacks", "Times Redis could not be reached and the agent fell back to its share",
            registry=r)
        self.budget_per_minute = Gauge(
            P + "budget_requests_per_minute",
            "Requests a minute this agent may use now (the whole company budget when shared)", registry=r)
        self.budget_refunds = Counter(P + "budget_refunds",
                                      "Requests taken from the budget and given back: the call was not sent",
                                      registry=r)
        self.uplink_paused = Gauge(P + "uplink_paused", "1 while every lane waits (429, bad credentials)",
                                   ["reason"], registry=r)
