"""tailor: recommendations that reach the long tail (library; Prefect-free)."""
