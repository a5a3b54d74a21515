"""`stgt pretrain ...` in its own process, SIGKILLing an MLflow server's process group at stage 2, step 2: a server
that dies while a stage trains. Used by test_tracking_failures.py.

    python kill_server_mid_pretrain.py PGID pretrain --params ... (the stgt arguments)
"""
from __future__ import annotations

import os
import signal
import sys
import time

import requests

from stgt_pipeline import cli
from stgt_pipeline.components.pretrain import stage as pretrain


def kill_and_wait(pgid: int, url: str) -> None:
    os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the port closes with the last process of the group
        try:
            requests.get(f"{url}/health", timeout=1)
        except requests.ConnectionError:
            return
        time.sleep(0.1)
    raise SystemExit(f"{url} still answers after SIGKILL")


def main() -> int:
    pgid, argv = int(sys.argv[1]), sys.argv[2:]
    url = os.environ["MLFLOW_TRACKING_URI"]
    real_logger = pretrain.curve_logger

    def killing_logger(path, phase):
        log = real_logger(path, phase)

        def logged(step, metrics):
            log(step, metrics)
            if phase == "stage2" and step == 2:
                kill_and_wait(pgid, url)
        return logged

    pretrain.curve_logger = killing_logger
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
