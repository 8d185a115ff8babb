"""Test support shipped with Frontier: the local Kubernetes control plane the cluster tests and the operator
benchmark run against. No product package imports it (an import contract checks that)."""
