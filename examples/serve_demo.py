r"""Serve a bundle with `kiln serve`, predict over HTTP, stop it with SIGTERM, and read the prediction log.

    python examples/serve_demo.py RUN_DIR/bundle-onnx-int8-static \
        $(ls data/fashion-mnist/test/Bag/*.png | head -2)

This is what `make demo` runs last. It starts the real server as a user would (a subprocess on a free
loopback port), so it shows the startup, the JSON answers, the metrics and the graceful shutdown.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from torchkiln.serve.predlog import read_predictions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args()
    port = free_port()
    log_db = args.bundle.resolve().parent / "serve" / "predictions.db"
    kiln = Path(sys.executable).parent / "kiln"
    cmd = [str(kiln), "serve", str(args.bundle), "--port", str(port), "--log-url", f"sqlite:///{log_db}"]
    print("$", " ".join(cmd[1:]), flush=True)
    server = subprocess.Popen(cmd)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            else:
                raise SystemExit(f"the server did not become ready (exit code {server.poll()})")
            name = client.get("/v1/models").json()["models"][0]["name"]
            files = [("images", (p.name, p.read_bytes(), "image/png")) for p in args.images]
            print(f"$ curl -F images=@... {base}/v1/models/{name}/predict")
            answer = client.post(f"/v1/models/{name}/predict", files=files, data={"top_k": "2"}).json()
            print(f"model {answer['model']} version {answer['version']} ({answer['arm']})")
            for path, p in zip(args.images, answer["predictions"], strict=True):
                print(f"  {path}: {p['label']} ({p['score']:.3f})")
            metrics = client.get("/metrics").text
            print(
                *[line for line in metrics.splitlines() if line.startswith("kiln_requests_total")], sep="\n"
            )
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: finish in-flight work, flush the log
        code = server.wait(timeout=60)  # uvicorn re-raises SIGTERM after its graceful shutdown: -15
    rows = read_predictions(f"sqlite:///{log_db}", limit=1)
    print(
        f"server stopped (exit status {code}); last prediction-log row: {rows[-1].request_id} "
        f"({rows[-1].items} inputs, {rows[-1].latency_ms:.1f} ms) in {log_db}"
    )


if __name__ == "__main__":
    main()
