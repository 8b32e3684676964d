"""neuroseg: a BIDS App for spinal-cord segmentation and CSA (MS lesions and CT haemorrhage to come).

Entry point: :func:`bids_app.cli.main`. The version is the repository's ``version`` file.
"""
