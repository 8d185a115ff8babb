"""Frontier's shared API: names on the wire and in the cluster, and the ModelTier resource models.

This package imports nothing else of Frontier's; every other component imports it, so one concept has one
name in code, CRDs, metrics and docs.
"""
