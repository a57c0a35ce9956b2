"""Prefect flows: thin wrappers that give a pipeline (:mod:`pipelines`) Prefect's runtime.

Each flow imports its pipeline inside its body, when it runs, not at the top of its module. The
flow server (:mod:`deployments.serve`) imports the flows to declare them, and keeps running
beside the warm parent that imports the pipelines and their libraries once for every run
(:mod:`deployments.warm`): declared this way, the flow server imports Prefect and the flows'
signatures only (about 3 s of CPU, where the pipelines' MLflow, XGBoost, Evidently and lakeFS
SDK took 10-12 s more, and 400 MB it held for nothing), which ``lakeloop up`` waits for.
A flow's parameters and their defaults therefore come from light modules (``lakeloop``'s
settings and events, :mod:`pipelines.reconcile_defaults`).
"""
