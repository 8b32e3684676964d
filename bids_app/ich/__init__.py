"""The ``ich`` task: intracranial haemorrhage in head CT (Spahr et al. 2023, label-efficient)."""
