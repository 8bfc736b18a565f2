"""The pipeline's steps as plain functions, one per Prefect task: paths in, paths out.

Stages exchange files (Parquet, .npy, .faiss, folders) rather than in-memory objects, so task
results stay small, cacheable and inspectable, and a run's folder shows what each step made.
Each result type says what it leaves in MLflow (`record()`), so a flow logs a step in one call.
"""
