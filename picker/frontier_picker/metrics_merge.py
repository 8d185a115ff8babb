"""One `/metrics` page for a multi-process picker: the workers' pages merged into the families one process
would have exported.

Counters, histograms and summaries add up across workers (each counts the requests it served). Gauges
either add up (`ADDITIVE_GAUGES`: what each worker holds, such as requests in flight or queued) or are the
same picture seen by every worker (the pool's endpoints and their scraped metrics), whose largest value is
taken. A counter's `_created` timestamp is the earliest. Each page is parsed with prometheus_client's own
parser.
"""

from collections.abc import Iterable, Iterator
from typing import Final

from prometheus_client import metrics_core as prometheus_metrics_core
from prometheus_client import parser as prometheus_parser
from prometheus_client import samples as prometheus_samples

# Gauges whose workers' values are parts of a whole: their sum is the pod's value.
ADDITIVE_GAUGES: Final = frozenset(
    {
        "frontier_picker_in_flight_requests",
        "inference_extension_flow_control_queue_size",
        "inference_extension_flow_control_queue_bytes",
    }
)


def merge(pages: Iterable[str]) -> Iterator[prometheus_metrics_core.Metric]:
    """The metric families of the workers' exposition `pages`, merged (see the module doc)."""
    families: dict[str, prometheus_metrics_core.Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for page in pages:
        for family in prometheus_parser.text_string_to_metric_families(page):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = prometheus_metrics_core.Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            adds = family.type != "gauge" or family.name in ADDITIVE_GAUGES
            seen = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in seen:
                    seen[key] = sample.value
                elif sample.name.endswith("_created"):  # a timestamp: the pod's series began with the first
                    seen[key] = min(seen[key], sample.value)
                elif adds:
                    seen[key] += sample.value
                else:
                    seen[key] = max(seen[key], sample.value)
    for name, family in families.items():
        family.samples = [
            prometheus_samples.Sample(sample_name, dict(labels), value)
            for (sample_name, labels), value in values[name].items()
        ]
        yield family
