"""The fleet: instances sharing one etcd prefix, and so one admin state (DESIGN.md). Below the
sources in the layers, so that the discovery source can use the gateway client."""
