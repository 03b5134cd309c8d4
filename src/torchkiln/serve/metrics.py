"""Prometheus metrics of one server app, in the app's own registry (two apps in one process don't mix).

With several gunicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by ``kiln serve`` and ``/metrics``
aggregates every worker's files, as prometheus-client's multiprocess mode prescribes.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    """The server's metrics. Label values are bounded: routes are templates, models come from settings."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "kiln_requests",
            "HTTP requests by model, version, route and status.",
            ["model", "version", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "kiln_request_duration_seconds",
            "Time from request to response.",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "kiln_batch_size",
            "Inputs per model call.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "kiln_model_call_seconds",
            "Time of one batched model call.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "kiln_queue_depth",
            "Requests waiting for a model call.",
            ["model", "arm"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.predicted = Counter(
            "kiln_predicted_class",
            "Predicted labels (the top-1 class of each input).",
            ["model", "version", "label"],
            registry=r,
        )
        self.out_of_distribution = Counter(
            "kiln_inputs_out_of_distribution",
            "Inputs far from the inputs the model was trained on, by reason (image: mode, size); each is "
            "still answered.",
            ["model", "version", "reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "kiln_model_info",
            "1 for each loaded model version.",
            ["model", "arm", "version", "task", "runtime"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reload_failures = Counter(
            "kiln_reload_failures",
            "Model loads that failed; the previous version kept serving.",
            ["model"],
            registry=r,
        )
        self.rejected = Counter(
            "kiln_rejected_requests",
            "Requests refused before the model: queue full (429), timeout (504).",
            ["model", "reason"],
            registry=r,
        )
        self.canary_failures = Counter(
            "kiln_canary_failures",
            "Requests the challenger failed while it answered a share of the traffic (a canary), by reason "
            "(error, queue_full, timeout); all but timeouts were answered by the champion instead.",
            ["model", "version", "reason"],
            registry=r,
        )
        self.shadow_dropped = Counter(
            "kiln_shadow_dropped",
            "Mirrored requests dropped because the challenger was busy.",
            ["model"],
            registry=r,
        )
        self.feedback = Counter(
            "kiln_feedback",
            "POST /v1/feedback requests by outcome (accepted, or why refused); model and version are those "
            "of the prediction, empty when no prediction was found.",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.feedback_labels = Counter(
            "kiln_feedback_labels",
            "Labelled inputs stored, by whether the answering version had predicted the label.",
            ["model", "version", "correct"],
            registry=r,
        )
        self.log_pending = Gauge(
            "kiln_prediction_log_pending",
            "Prediction-log records not yet written.",
            registry=r,
            multiprocess_mode="livesum",
        )

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
