"""Probes, supervised controllers, switching metrics and plots."""
