"""A real one-node Slurm cluster for the tests: munged, slurmctld, slurmd.

Debian's slurm-wlm and munge (``tools/ensure-slurm`` installs them when run
as root, as ``make test`` does), started as root with every file in a
temporary directory: the munge key and socket, slurm.conf (one node with
the machine's CPUs, one partition), the controller's state, the logs. The
daemons are stopped and the directory removed afterwards. ``SLURM_CONF``
points sbatch, squeue and scancel (and the jobs) at it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")


def unavailable() -> str | None:
    """Why no cluster can be started here, or None."""
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing:
        return (f"no Slurm: {', '.join(missing)} missing; run tools/ensure-slurm "
                "as root (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        return "the one-node Slurm cluster of the tests needs root (slurmd runs jobs)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(d: Path, host: str) -> str:
    return f"""\
ClusterName=fmriftest
SlurmctldHost={host}(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.sock
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
MinJobAge=3600
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _log_tail(d: Path) -> str:
    out = []
    for p in sorted((d / "log").glob("*.log")) + [d / "munge" / "munged.log"]:
        if p.exists():
            out.append(f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-15:]))
    return "\n".join(out)


@contextlib.contextmanager
def one_node_cluster():
    """Start the cluster; yields its directory. Raises RuntimeError with
    the daemons' logs when it does not come up."""
    d = Path(tempfile.mkdtemp(prefix="fmrif-slurm-"))
    for sub in ("munge", "state", "spool", "log"):
        (d / sub).mkdir(mode=0o700)
    os.chmod(d, 0o755)  # munged wants the socket's directories searchable
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    conf = d / "slurm.conf"
    conf.write_text(_config(d, host))
    env = dict(os.environ, SLURM_CONF=str(conf))
    old = os.environ.get("SLURM_CONF")
    pidfiles = [d / "slurmd.pid", d / "slurmctld.pid", d / "munge" / "munged.pid"]
    try:
        subprocess.run(["munged", "--force", f"--key-file={key}",
                        f"--socket={d}/munge/munge.sock",
                        f"--pid-file={d}/munge/munged.pid",
                        f"--log-file={d}/munge/munged.log",
                        f"--seed-file={d}/munge/seed"], check=True, env=env,
                       capture_output=True)
        subprocess.run(["slurmctld", "-c"], check=True, env=env, capture_output=True)
        subprocess.run(["slurmd", "-N", host], check=True, env=env, capture_output=True)
        os.environ["SLURM_CONF"] = str(conf)
        deadline = time.monotonic() + 30
        while True:
            info = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env,
                                  capture_output=True, text=True)
            if info.stdout.strip() in ("idle", "mixed", "allocated"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the one-node Slurm cluster did not come up:\n"
                                   + info.stdout + info.stderr + _log_tail(d))
            time.sleep(0.3)
        yield d
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"starting {e.cmd[0]} failed: {e.stderr!r}\n"
                           + _log_tail(d)) from None
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env,
                       capture_output=True)
        for pidfile in pidfiles:  # only the daemons this set-up started
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        time.sleep(0.5)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        shutil.rmtree(d, ignore_errors=True)
