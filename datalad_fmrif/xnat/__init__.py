"""The XNAT side: one logged-in session, catalog queries, and their records.

Nothing in here knows about git-annex or DataLad datasets.
"""
