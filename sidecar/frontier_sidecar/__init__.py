"""Frontier's routing sidecar: the decode pod's proxy for prefill/decode disaggregation.

It listens on the InferencePool's target port in front of the local engine (vLLM or the simulator) and passes
every request through, except a completion carrying `x-prefiller-host-port`: that one is prefilled on the
named endpoint first and decoded locally with the prompt's KV pulled over vLLM's NixlConnector.
"""
