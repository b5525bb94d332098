"""A local stand-in for the FMRIF XNAT server, with synthetic data.

For demos, tests and benchmarks: a real HTTP server on 127.0.0.1 that speaks
enough of XNAT 1.8's REST API for xnatpy and datalad-fmrif, serving a lazy,
deterministic synthetic study (see :mod:`.study`), with injectable faults,
latency and bandwidth limits.  Shares no code with the client.

    from datalad_fmrif.sandbox import Sandbox, StudySpec, Fault
    with Sandbox(StudySpec(subjects=5)) as sb:
        print(sb.url, sb.user, sb.password)
"""

from .server import Fault, RequestRecord, Sandbox
from .study import Study, StudySpec

__all__ = ["Sandbox", "StudySpec", "Fault", "RequestRecord", "Study"]
