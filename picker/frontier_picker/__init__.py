"""Frontier's endpoint picker: a GIE-compatible Envoy ext_proc server that picks, for each inference
request, the model tier and the endpoint (and, for disaggregated tiers, the prefill endpoint) to serve it."""
