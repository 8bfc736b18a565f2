"""Prefect tasks: thin wrappers over `tailor.pipeline`, adding retries, caching and logs."""
