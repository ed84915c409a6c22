"""``spinenet train`` with faults injected from environment variables, for the process-level tests.

FAULT_KILL_WRITING=NAME: SIGKILL this process while it writes the file NAME (its data written to the temporary
file, not yet renamed), the worst moment for a crash. FAULT_AP_SEQUENCE="0.5,0.1,...": successive evaluations
report these APs (counted across processes in the file FAULT_AP_COUNTER), so a test can make a later model worse.
"""

import os
import signal
import sys

KILL_WRITING = os.environ.get("FAULT_KILL_WRITING")
if KILL_WRITING:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{KILL_WRITING}."):
            os.kill(os.getpid(), signal.SIGKILL)
        real_fsync(fd)

    os.fsync = fsync

AP_SEQUENCE = os.environ.get("FAULT_AP_SEQUENCE")
if AP_SEQUENCE:
    import spinenet.engine.train as train_module

    def scripted_evaluation(*args, **kwargs) -> dict:
        counter = os.environ["FAULT_AP_COUNTER"]
        n = int(open(counter).read()) if os.path.exists(counter) else 0
        with open(counter, "w") as f:
            f.write(str(n + 1))
        ap = float(AP_SEQUENCE.split(",")[n])
        return {k: ap for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}

    train_module.run_evaluation = scripted_evaluation

if __name__ == "__main__":
    from spinenet.cli import main

    sys.exit(main(sys.argv[1:]))
