"""Frontier's endpoint picker: a GIE-compatible Envoy ext_proc server that picks, for each inference
request, the endpoint serving its model (and, for disaggregated tiers, the prefill endpoint)."""
