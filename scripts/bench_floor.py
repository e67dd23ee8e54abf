"""The floor of ``scripts/bench``'s Conductor rows: a raw keep-alive HTTP worker loop, standard
library only (``http.client``, ``json``), no framework (not part of the taskfleet package).

Each of ``threads`` threads keeps one HTTP/1.1 connection and loops: batch poll for one task
(long poll) → no-op → ``POST /tasks/update-v2``, whose answer is the next task when the queue has
one (so under load a task costs one request). No retries, no spool, no metrics, no supervision:
what the protocol itself costs a Python client.

``python -c "import bench_floor; bench_floor.main()" URL TASK_TYPE THREADS`` prints
``{"supervisor": pid, "workers": [pid]}`` and runs until stdin closes.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import urllib.parse
from typing import Any


def slot(base: str, task_type: str, worker_id: str) -> None:
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=30)
    poll_path = (
        f"{url.path}/tasks/poll/batch/{urllib.parse.quote(task_type, safe='')}"
        f"?workerid={worker_id}&count=1&timeout=1000"
    )
    update_path = f"{url.path}/tasks/update-v2"
    headers = {"Content-Type": "application/json"}
    task: Any = None
    while True:
        if task is None:
            conn.request("GET", poll_path)
            resp = conn.getresponse()
            data = resp.read()
            tasks = json.loads(data) if resp.status == 200 and data else []
            if not tasks:
                continue
            task = tasks[0]
        output: dict[str, Any] = {}  # the no-op handler
        body = json.dumps(
            {
                "taskId": task["taskId"],
                "workflowInstanceId": task["workflowInstanceId"],
                "workerId": worker_id,
                "status": "COMPLETED",
                "outputData": output,
            }
        ).encode()
        conn.request("POST", update_path, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        task = json.loads(data) if resp.status == 200 and data else None


def main() -> int:
    base, task_type, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(threads):
        worker_id = f"floor-{os.getpid()}-{i}"
        threading.Thread(target=slot, args=(base, task_type, worker_id), daemon=True).start()
    print(json.dumps({"supervisor": os.getpid(), "workers": [os.getpid()]}), flush=True)
    sys.stdin.read()  # the driver closes stdin to stop the loop
    return 0
