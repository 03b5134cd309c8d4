r"""The closed loop on real Fashion-MNIST: serve, drift, feedback, retrain, shadow, canary, promotion,
recovery.

    python examples/closed_loop.py [--work runs/closed-loop] [--reuse]

This is what `make closed-loop` runs. Every step uses the product as a user would, and prints its figures:

1. train a quick Fashion-MNIST champion (or --reuse the last one), register it as models:/fashion@champion
   with the challenger alias on the same version, and serve it with `kiln serve` (a subprocess on a free
   loopback port, the challenger in shadow, every request body kept in the prediction log);
2. replay clean test images over HTTP, then darker ones (brightness x 0.5);
3. `kiln monitor watch --once` on each window: the drift alert reaches a local webhook for the dark one only;
4. POST /v1/feedback: the true labels of the dark images;
5. `kiln retrain` fine-tunes a challenger on them (the feedback-labelled bodies of the log);
6. the challenger wins on the fresh dark test set, goes through shadow on the live server, then answers a
   share of the requests as a canary until a sequential test passes it (a thread sends the labelled dark
   traffic both phases wait for), and is promoted;
7. the replaced champion goes back into the shadow arm, so both versions answer the same new dark
   traffic: the prediction log shows which version answered each request, and live accuracy recovers.

Everything (data, runs, the MLflow store, the registry cache, the log) goes under --work. The loop waits
on events (readiness, log rows, the challenger's reload), never on fixed sleeps.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from PIL import Image

from torchkiln.serve.predlog import read_predictions

MODEL = "fashion"
KILN = Path(sys.executable).parent / "kiln"
ROOT = Path(__file__).resolve().parent.parent


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kiln(*args: str, env: dict[str, str], echo: bool = True) -> str:
    """Run a kiln command, echo its output (unless the caller prints its figures), return its last line."""
    print("$ kiln", " ".join(args), flush=True)
    proc = subprocess.run([str(KILN), *args], env=env, text=True, capture_output=True, check=False)
    out = proc.stdout.strip()
    for line in out.splitlines()[-12:] if echo else []:
        print("  ", line)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"kiln {args[0]} failed (exit status {proc.returncode})")
    return out.splitlines()[-1] if out else ""


def darker(png: bytes) -> bytes:
    """The shift: brightness x 0.5, encoded as PNG again."""
    img = Image.open(io.BytesIO(png))
    buf = io.BytesIO()
    Image.eval(img, lambda v: v // 2).save(buf, format="PNG")
    return buf.getvalue()


# --- step 1: data, champion, registry, server ---------------------------------------------------------


def fetch_data(work: Path, env: dict[str, str]) -> tuple[Path, Path]:
    train, test = work / "data" / "fashion-train", work / "data" / "fashion-test"
    for split, out in (("train", train), ("test", test)):
        if not (out / split).is_dir():
            kiln("datasets", "fetch", "fashion-mnist", "--split", split, "--out", str(out), env=env)
    return train / "train", test / "test"


def original_manifest(train: Path, work: Path, per_class: int) -> Path:
    """The champion's training data: `per_class` training images of each class, as a CSV manifest
    (kiln retrain merges new data into an image folder or manifest, so the data is files, not the catalog)."""
    manifest = work / "data" / f"original-{per_class}.csv"
    if not manifest.is_file():
        rng = random.Random(0)
        rows = []
        for folder in sorted(p for p in train.iterdir() if p.is_dir()):
            files = sorted(folder.glob("*.png"))
            rows += [(str(p.resolve()), folder.name, "train") for p in rng.sample(files, per_class)]
        with manifest.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([("path", "label", "split"), *rows])
    return manifest


def champion_run(args: argparse.Namespace, manifest: Path, env: dict[str, str]) -> Path:
    last = args.work / "champion-run"
    if args.reuse and last.is_file() and (Path(last.read_text().strip()) / "bundle").is_dir():
        run = Path(last.read_text().strip())
        print(f"reusing the champion run {run} (--reuse)")
        return run
    t0 = time.monotonic()
    run = Path(
        kiln(
            "train",
            str(ROOT / "examples" / "fashion-mnist.yaml"),
            "--set",
            f"data.path={manifest}",
            "--set",
            f"runs_dir={args.work / 'runs'}",
            "--set",
            "tracking.tensorboard=false",
            "--epochs",
            str(args.epochs),
            "--name",
            "fashion-champion",
            env=env,
        )
    )
    print(f"trained in {time.monotonic() - t0:.0f} s: {run}")
    last.write_text(f"{run}\n", encoding="utf-8")
    return run


def register(run: Path, env: dict[str, str]) -> str:
    line = kiln("registry", "register", str(run / "bundle"), "--name", MODEL, "--alias", "champion", env=env)
    version = line.rsplit("/", 1)[-1]
    kiln("registry", "alias", MODEL, version, "challenger", env=env)
    return version


class Server:
    """`kiln serve` in a subprocess, with the challenger in shadow and every request body logged."""

    def __init__(self, work: Path, env: dict[str, str], log_url: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = work / "serve.yaml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "models": [
                        {
                            "name": MODEL,
                            "uri": f"models:/{MODEL}@champion",
                            "challenger": f"models:/{MODEL}@challenger",
                            "shadow": True,
                        }
                    ],
                    "log_url": log_url,
                    "log_payload_sample_rate": 1.0,  # keep every body: kiln retrain trains on them
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        cmd = [str(KILN), "serve", "--config", str(config), "--port", str(self.port)]
        print(
            "$ kiln serve --config", config, "--port", self.port, "  # admin token: $KILN_SERVE_ADMIN_TOKEN"
        )
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=(work / "serve.log").open("w")
        )

    def wait_ready(self, client: httpx.Client, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server did not become ready (exit status {self.proc.poll()}); see serve.log")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # graceful: in-flight work finishes, the log is flushed
            try:
                return self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.poll()


# --- traffic -------------------------------------------------------------------------------------------


def replay(client: httpx.Client, items: list[tuple[bytes, str]], *, label: bool = False) -> list[dict]:
    """Send one request per image, 4 at a time; with `label`, POST each true label as feedback. A request
    the server refuses is kept with its status (and printed by the caller), not raised."""

    def one(item: tuple[bytes, str]) -> dict:
        png, truth = item
        try:
            r = client.post(f"/v1/models/{MODEL}/predict", json={"image": base64.b64encode(png).decode()})
        except httpx.TransportError as exc:  # e.g. the server reset the connection
            return {"status": type(exc).__name__, "detail": str(exc), "truth": truth}
        if r.status_code != 200:
            return {"status": r.status_code, "detail": r.text[:200], "truth": truth}
        answer = r.json()
        out = {
            "status": 200,
            "id": answer["request_id"],
            "version": answer["version"],
            "label": answer["predictions"][0]["label"],
            "truth": truth,
        }
        if label:
            fb = client.post("/v1/feedback", json={"request_id": out["id"], "label": truth})
            if fb.status_code != 201:
                raise SystemExit(f"POST /v1/feedback answered {fb.status_code}: {fb.text}")
        return out

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, items))


def ok(results: list[dict]) -> list[dict]:
    return [r for r in results if r["status"] == 200]


def accuracy(results: list[dict]) -> float:
    return sum(r["label"] == r["truth"] for r in ok(results)) / max(len(ok(results)), 1)


def failures(results: list[dict]) -> str:
    bad = [r for r in results if r["status"] != 200]
    return f"; {len(bad)} failed: {bad[0]['status']} {bad[0]['detail']}" if bad else ""


def wait_logged(log_url: str, ids: set[str], *, shadow: bool = False, timeout: float = 60) -> int:
    """Wait until every request in `ids` has its answered row in the prediction log (with `shadow`, also
    its shadow row, for at most `timeout`: the server drops a shadow call it cannot take). Returns the
    number of shadow rows of `ids`."""
    deadline = time.monotonic() + timeout
    while True:
        rows = read_predictions(log_url, model=MODEL, limit=4 * len(ids) + 100)
        answered = ids <= {r.request_id for r in rows if not r.shadow}
        mirrored = ids & {r.request_id for r in rows if r.shadow}
        if answered and (not shadow or mirrored == ids or time.monotonic() > deadline):
            return len(mirrored)
        if time.monotonic() > deadline:
            raise SystemExit(f"the prediction log did not get the {len(ids)} requests within {timeout} s")
        time.sleep(0.1)


# --- step 3: the watch loop and its webhook ------------------------------------------------------------


class Webhook:
    """A local receiver for kiln monitor watch's alerts."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/kiln-alert"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def watch_once(name: str, args: argparse.Namespace, log_url: str, hook: Webhook, env: dict[str, str]) -> dict:
    out = args.work / "monitor" / name
    before = len(hook.events)
    kiln(
        "monitor",
        "watch",
        MODEL,
        "--log-url",
        log_url,
        "--window",
        str(args.window),
        "--once",
        "--raise-after",
        "1",
        "--state",
        str(args.work / "monitor" / "state.json"),
        "--webhook",
        hook.url,
        "--out",
        str(out),
        env=env,
        echo=False,
    )
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for v in report["versions"]:
        if v["shadow"]:  # between retrains the shadow arm is the champion's own version: the same figures
            print(f"  version {v['version']} (shadow): {v['items']} inputs, verdict {v['verdict']!r}")
            continue
        fired = [r["key"] for r in v["drift"].get("rows", []) if r["drifted"]]
        scores = ", ".join(f"{k} {s:.2f}" for k, s in sorted(v.get("scores", {}).items()))
        print(
            f"  version {v['version']}{' (shadow)' if v['shadow'] else ''}: {v['items']} inputs, "
            f"verdict {v['verdict']!r}; scores (1.0 = threshold): {scores}"
        )
        if fired:
            print(f"    rows that fire: {', '.join(fired)}")
    new = hook.events[before:]
    print(f"  webhook {hook.url}: {len(new)} event(s)")
    for e in new:
        print(
            f"    {e['event']}: {e['model']} version {e['version']}{' (shadow)' if e['shadow'] else ''}, "
            f"{e['items']} items, drifted {e['drifted']}"
        )
    return report


# --- steps 6 and 7 -------------------------------------------------------------------------------------


def served(client: httpx.Client) -> dict[str, str]:
    models = client.get("/v1/models").json()["models"]
    return {v["arm"]: v["version"] for m in models if m["name"] == MODEL for v in m["versions"]}


def shadow_traffic(
    client: httpx.Client, champion: str, items: list[tuple[bytes, str]], stop: threading.Event, sent: list
) -> None:
    """Wait until the server mirrors to a new challenger (kiln retrain's shadow phase), then send labelled
    dark traffic, 4 requests at a time, through the shadow and the canary phase until the arms change
    again (promotion or rollback), kiln retrain ends, or the images run out."""
    arms = {"champion": champion, "challenger": champion}
    while not stop.is_set() and (arms := served(client))["challenger"] == champion:
        time.sleep(0.2)
    for i in range(0, len(items), 4):
        if stop.is_set() or served(client) != arms:
            return
        sent += replay(client, items[i : i + 4], label=True)


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def performance(client: httpx.Client, window: int) -> dict[tuple[str, bool], dict]:
    perf = client.get(f"/v1/models/{MODEL}/performance", params={"window": window}).json()
    return {(v["version"], v["shadow"]): v for v in perf["versions"]}


def show_performance(perf: dict[tuple[str, bool], dict]) -> None:
    for (version, shadow), v in sorted(perf.items()):
        a = v["accuracy"]
        print(
            f"  version {version}{' (shadow)' if shadow else '         '}: accuracy {a['value']:.3f} "
            f"[{a['low']:.3f}, {a['high']:.3f}] on {v['labelled']} labelled inputs"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/closed-loop"), help="everything goes here")
    parser.add_argument("--reuse", action="store_true", help="reuse the last champion run in --work")
    parser.add_argument("--per-class", type=int, default=400, help="training images per class")
    parser.add_argument("--epochs", type=int, default=4, help="the champion's epochs")
    parser.add_argument("--retrain-epochs", type=int, default=4, help="the challenger's epochs")
    parser.add_argument("--clean", type=int, default=300, help="clean test images replayed")
    parser.add_argument("--shifted", type=int, default=2000, help="dark test images replayed and labelled")
    parser.add_argument("--after", type=int, default=1000, help="dark images sent after the promotion")
    parser.add_argument("--window", type=int, default=300, help="the drift check's window (inputs)")
    parser.add_argument("--canary-weight", type=float, default=0.25, help="the canary's share of requests")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the server
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    for old in ("serve", "monitor", "retrain"):  # a fresh log and fresh reports each run
        shutil.rmtree(args.work / old, ignore_errors=True)
    (args.work / "serve").mkdir()
    token = os.environ.get("KILN_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{args.work / 'runs' / 'mlflow.db'}",  # runs and registry
        "KILN_CACHE_DIR": str(args.work / "cache"),  # the registry's downloads
        "KILN_ADMIN_TOKEN": token,  # kiln retrain's --admin-token
        "KILN_SERVE_ADMIN_TOKEN": token,  # kiln serve's admin_token
    }
    log_url = f"sqlite:///{args.work / 'serve' / 'predictions.db'}"
    t_start = time.monotonic()

    step("1. Champion: train, register, serve")
    train_dir, test_dir = fetch_data(args.work, env)
    manifest = original_manifest(train_dir, args.work, args.per_class)
    run = champion_run(args, manifest, env)
    history = json.loads((run / "history.json").read_text(encoding="utf-8"))
    best = max(h["val/accuracy"] for h in history)
    print(f"  {len(history)} epochs on {args.per_class} images per class: best val accuracy {best:.3f}")
    v1 = register(run, env)
    print(f"  models:/{MODEL}@champion = models:/{MODEL}@challenger = version {v1}")

    test = [(p, p.parent.name) for p in sorted(test_dir.glob("*/*.png"))]
    random.Random(1).shuffle(test)
    n = [args.clean, args.shifted, 1000, args.after]
    clean = [(p.read_bytes(), lab) for p, lab in test[: n[0]]]
    dark = [(darker(p.read_bytes()), lab) for p, lab in test[n[0] : sum(n)]]
    shifted, shadow_pool, after = dark[: n[1]], dark[n[1] : n[1] + n[2]], dark[n[1] + n[2] :]

    hook = Webhook()
    server = Server(args.work, env, log_url)
    try:
        with httpx.Client(base_url=server.base, timeout=60) as client:
            t0 = time.monotonic()
            server.wait_ready(client)
            print(f"  ready in {time.monotonic() - t0:.1f} s on {server.base}: serving {served(client)}")

            step("2. Traffic: clean test images, then darker ones (brightness x 0.5)")
            got = replay(client, clean)
            wait_logged(log_url, {r["id"] for r in ok(got)})
            print(f"  {len(got)} clean requests: accuracy {accuracy(got):.3f} (client side){failures(got)}")

            step("3. Drift check on the clean window (kiln monitor watch --once, webhook receiver)")
            watch_once("clean", args, log_url, hook, env)

            dark_got = replay(client, shifted)
            wait_logged(log_url, {r["id"] for r in ok(dark_got)})
            print(f"\n  {len(dark_got)} dark requests: accuracy {accuracy(dark_got):.3f}{failures(dark_got)}")
            step("3. Drift check on the dark window")
            watch_once("shifted", args, log_url, hook, env)

            step("4. Feedback: the true labels of the dark images (POST /v1/feedback)")
            for r in ok(dark_got):
                fb = client.post("/v1/feedback", json={"request_id": r["id"], "label": r["truth"]})
                if fb.status_code != 201:
                    raise SystemExit(f"POST /v1/feedback answered {fb.status_code}: {fb.text}")
            print(f"  {len(ok(dark_got))} labels stored; GET /v1/models/{MODEL}/performance:")
            show_performance(performance(client, len(dark_got)))

            step("5-6. kiln retrain: fine-tune on the labelled dark images, judge, shadow, canary, promote")
            out = args.work / "retrain"
            config = run / "config.yaml"
            cmd = [
                "retrain", str(config), "--model", MODEL, "--feedback-from", log_url,
                "--server", server.base, "--log-url", log_url,
                "--drift-report", str(args.work / "monitor" / "shifted" / "report.json"),
                "--out", str(out), "--set", f"epochs={args.retrain_epochs}",
                "--set", f"replay_items={args.shifted}", "--set", f"canary_weight={args.canary_weight}",
            ]  # fmt: skip
            print("$ kiln", " ".join(cmd), '--admin-token "$KILN_ADMIN_TOKEN"  # from the environment')
            stop, sent = threading.Event(), []
            driver = threading.Thread(target=shadow_traffic, args=(client, v1, shadow_pool, stop, sent))
            driver.start()
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [str(KILN), *cmd], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            out.mkdir(parents=True, exist_ok=True)
            with (out / "retrain.log").open("w", encoding="utf-8") as logfile:
                for line in proc.stdout:  # its log, live: the steps and the challenger's epochs
                    logfile.write(line)
                    if line.startswith(("note: step", "epoch ", "error", "Error")):
                        print("  ", line.rstrip()[:160], flush=True)
            proc.wait()
            stop.set()
            driver.join()
            if proc.returncode != 0 or not (out / "decision.json").is_file():
                raise SystemExit(
                    f"kiln retrain failed (exit status {proc.returncode}); see {out / 'retrain.log'}"
                )
            d = json.loads((out / "decision.json").read_text(encoding="utf-8"))
            t = d["test"]
            print(f"  took {time.monotonic() - t0:.0f} s; the full log is {out / 'retrain.log'}")
            print(f"  data: {d['data']['counts']} (fresh test set: {d['data']['test_items']} dark images)")
            print(
                f"  fresh dark test set: champion {d['champion']['metrics']['accuracy']:.3f}, challenger "
                f"{d['challenger']['metrics']['accuracy']:.3f}; McNemar b={t['b']} c={t['c']}, one-sided "
                f"mid-p {t['p_midp']:.3g} (exact {t['p_exact']:.3g}), alpha {t['alpha']}"
            )
            rp = d.get("replay") or {}
            if rp.get("inputs"):
                acc = rp["accuracy_on_labelled"]
                print(
                    f"  offline replay of {rp['inputs']} logged inputs: agreement {rp['agreement']:.3f}; "
                    f"on {rp['labelled']} labelled: champion {acc['champion']:.3f}, "
                    f"challenger {acc['challenger']:.3f}"
                )
            sh = (d.get("live") or {}).get("shadow")
            if sh:
                print(
                    f"  shadow on the live server ({len(sent)} labelled dark requests sent by a thread"
                    f"{failures(sent)}): "
                    f"judged on {sh['requests']} requests, {sh['shadow_answers']} shadow answers, error rate "
                    f"{sh['error_rate']:.3f}, p99 {sh['p99_ms']:.1f} ms, agreement {sh['agreement']:.3f}"
                )
            ca = (d.get("live") or {}).get("canary")
            if ca:
                canary_answers = sum(r["version"] == d["challenger"].get("version") for r in ok(sent))
                print(
                    f"  canary at {ca['weight']:.0%} of request keys: {ca['requests']} canary requests "
                    f"({canary_answers} of them labelled by the thread), {ca['failures']} failed; sequential "
                    f"test: {ca['decision']} after {ca['seconds']:.1f} s (log-likelihood ratio "
                    f"{ca['log_likelihood_ratio']:.2f}); p99 {ms(ca['p99_ms'])} against the champion's "
                    f"{ms(ca['champion_p99_ms'])}"
                )
            print(f"  outcome: {d['outcome']}: {d['reason']}")
            if d["outcome"] != "promoted":
                raise SystemExit("the challenger was not promoted; see the decision record above")
            v2 = d["challenger"]["version"]
            print(f"  the server now serves {served(client)}")

            step("7. After the promotion: more dark traffic, with labels, the old champion in shadow")
            # For a like-for-like figure, the replaced champion goes back into the shadow arm: both versions
            # then answer the same labelled inputs (kiln retrain leaves the challenger alias on the winner).
            kiln("registry", "alias", MODEL, v1, "challenger", env=env)
            r = client.post(
                "/admin/reload",
                params={"model": MODEL, "force": "false"},
                headers={"Authorization": f"Bearer {token}"},
            )
            if r.status_code != 200:
                raise SystemExit(f"POST /admin/reload answered {r.status_code}: {r.text}")
            print(f"  POST /admin/reload: the server now serves {served(client)}")
            after_got = replay(client, after, label=True)
            mirrored = wait_logged(log_url, {r["id"] for r in ok(after_got)}, shadow=True, timeout=30)
            print(
                f"  {len(after_got)} dark requests: accuracy {accuracy(after_got):.3f}{failures(after_got)} "
                f"({mirrored} shadow answers by version {v1})"
            )

            phases = {"clean": got, "dark": dark_got, "shadow, canary": sent, "after promotion": after_got}
            phase_of = {r["id"]: name for name, rs in phases.items() for r in ok(rs)}
            rows = [r for r in read_predictions(log_url, model=MODEL) if r.request_id in phase_of]
            print(f"  the prediction log ({len(rows)} rows): which version answered, per phase")
            for name in phases:
                answered = Counter(r.version for r in rows if phase_of[r.request_id] == name and not r.shadow)
                mirrored = Counter(r.version for r in rows if phase_of[r.request_id] == name and r.shadow)
                print(f"    {name:16s} answered by {dict(answered)}, shadow answers by {dict(mirrored)}")
            first = next((r for r in rows if not r.shadow and r.version == v2), None)
            if first:
                print(
                    f"    first request answered by version {v2}: {first.request_id} "
                    f"at {first.time:%H:%M:%S.%f}"
                )
            labelled = len(ok(dark_got)) + len(ok(sent)) + len(ok(after_got))
            print(f"  live accuracy, GET /v1/models/{MODEL}/performance?window={labelled} (every label):")
            show_performance(every := performance(client, labelled))
            print(f"  ?window={len(ok(after_got))}: only the inputs after the promotion:")
            show_performance(now := performance(client, len(ok(after_got))))
            old_v, new_v = now.get((v1, True)), now.get((v2, False))
            if old_v and new_v:
                print(
                    f"  dark traffic: version {v1} answered {every[(v1, False)]['accuracy']['value']:.3f} "
                    f"before the promotion; after it, on the same inputs, version {v2} "
                    f"{new_v['accuracy']['value']:.3f} vs version {v1} {old_v['accuracy']['value']:.3f} "
                    f"(clean traffic: {accuracy(got):.3f})"
                )
    finally:
        code = server.stop()
        hook.httpd.shutdown()
        print(
            f"\nserver stopped (exit status {code}); the loop took {time.monotonic() - t_start:.0f} s; all "
            f"files under {args.work}"
        )


if __name__ == "__main__":
    main()
