"""ispstream benchmarks: ``python -m bench`` runs every registered benchmark."""
