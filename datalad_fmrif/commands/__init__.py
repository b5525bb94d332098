"""DataLad commands of datalad-fmrif: thin layers over the library modules."""
