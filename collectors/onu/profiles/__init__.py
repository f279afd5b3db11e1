"""Shipped OLT vendor profiles (data, one YAML file per profile; see ``profile.py``)."""
