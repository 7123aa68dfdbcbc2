"""Monitoring: served-feature logs, profiles, drift, freshness, serve-time skew and their report.

Imported only by what uses it: the CLI's ``monitor``, the store's monitoring methods, the server when logging
is configured.
"""
