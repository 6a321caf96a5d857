"""Kubeflow Pipelines: one component per registry stage, pipelines as named stage subsets."""
