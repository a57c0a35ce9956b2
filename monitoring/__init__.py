"""Drift monitoring (Evidently on live predictions) and the metrics Grafana reads.

Monitoring is compute -> parse -> persist -> decide, each a plain function; the monitor flow in
``flows/`` sequences them.
"""
