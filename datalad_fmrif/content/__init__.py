"""Verified content: every byte checked against XNAT's size and MD5 before it counts.

- :mod:`.streams` -- reading a streamed body (chunks, what a break looks like);
- :mod:`.zipstream` -- a zip read entry by entry as it streams (pure);
- :mod:`.bulk` -- one zip per scan resource into the annex (``fmrif-download``);
- :mod:`.transfer` -- one file, resumable (the special remote);
- :mod:`.remote_zip` -- the special remote's cache of resource zips
  (``datalad get`` of many files of one scan).
"""
