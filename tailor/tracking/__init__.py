"""MLflow: runs written by explicit id, what each step records, the registry and its gate."""
