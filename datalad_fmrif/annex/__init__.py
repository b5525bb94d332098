"""The git-annex repository of a dataset, worked on in bulk.

One module per job:

- :mod:`.repo` -- :class:`Annex`: git-annex's own commands (register URLs,
  metadata, get, reinject, lookups), each one ``--batch`` process per
  operation;
- :mod:`.batch` -- those processes: the line protocol, its checks, stopping
  a process tree;
- :mod:`.keys` -- the one key model: build (git-annex's MD5E extension
  rule), check, read;
- :mod:`.fastpath` -- git-annex's jobs done directly in bulk (branch
  records, symlinks, content move-in and its crash journal) behind one
  :func:`supported` decision;
- :mod:`.gitops` -- plain git: configuration, commit, discard.
"""

from .batch import AnnexError
from .fastpath import INJECT_BATCH, LOGS_REFS, Ingest, supported
from .repo import WEB_UUID, Annex

__all__ = ["Annex", "AnnexError", "Ingest", "supported", "WEB_UUID", "LOGS_REFS",
           "INJECT_BATCH"]
