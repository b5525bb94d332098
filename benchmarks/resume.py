"""Does resuming a broken file download pay, compared with starting over?

A quick measurement (not part of ``make bench``): one file of SIZE bytes
from the sandbox XNAT with a bandwidth cap and a per-request latency like a
real server's; its body breaks off at a fraction of its length, then the
file is completed (a) by resuming from the kept prefix with a Range request
(as XNAT 1.8's Restlet 1.1.10 answers it) and (b) by downloading it again from byte 0.

    .venv/bin/python benchmarks/resume.py [--size MB] [--bandwidth MB/s] [--latency S]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from datalad_fmrif.credentials import Credential, Rejections
from datalad_fmrif.sandbox import Fault, Sandbox, StudySpec
from datalad_fmrif.content.transfer import fetch
from datalad_fmrif.xnat.session import XnatSession


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=float, default=32.0, help="file size in MB")
    ap.add_argument("--bandwidth", type=float, default=50.0, help="MB/s")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = int(args.size * 1e6)
    spec = StudySpec(seed=0, subjects=1, sessions_per_subject=(1, 1), scans_per_session=2,
                     files_per_scan=1, file_size=size, physio=False)
    with Sandbox(spec, latency=args.latency, bandwidth=args.bandwidth * 1e6) as sb, \
            tempfile.TemporaryDirectory() as tmp:
        e = sb.study.sessions(sb.study.subjects("17-M-0181")[0].id)[0]
        f = sb.study.scan_files(e.id, "1")[0]
        f.content()  # generated before timing
        path = f"/data/experiments/{e.id}/scans/1/resources/{f.resource_id}/files/{f.name}"
        cred = Credential("bench", sb.user, sb.password, "environment")
        with XnatSession(sb.url, cred, backoff=0.0,
                         rejections=Rejections(Path(tmp) / "r")) as xnat:
            print(f"{args.size:.0f} MB file, {args.bandwidth:.0f} MB/s, "
                  f"{args.latency * 1000:.0f} ms per request; median of {args.rounds}")
            print("broken at | resume (s) | start over (s)")
            for fraction in (0.1, 0.5, 0.9):
                times = {"resume": [], "restart": []}
                for _ in range(args.rounds):
                    for way in times:
                        dest = Path(tmp) / "f.dcm"
                        dest.unlink(missing_ok=True)
                        sb.add_fault(Fault("truncate", path=f.name,
                                           after_bytes=int(size * fraction)))
                        try:
                            fetch(xnat, path, dest, size=f.size, md5=f.md5)
                        finally:
                            sb.clear_faults()
                        # the first request broke off and was completed within
                        # fetch; measure the completion on its own
                        dest.write_bytes(f.content()[:int(size * fraction)])
                        if way == "restart":
                            dest.unlink()
                        started = time.perf_counter()
                        fetch(xnat, path, dest, size=f.size, md5=f.md5)
                        times[way].append(time.perf_counter() - started)
                print(f"{fraction:>9.0%} | {statistics.median(times['resume']):10.2f} | "
                      f"{statistics.median(times['restart']):14.2f}")


if __name__ == "__main__":
    main()
