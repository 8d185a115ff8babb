"""The Frontier operator: kopf handlers turning ModelTier resources into vLLM Deployments, pure renderers."""
