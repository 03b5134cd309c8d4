r"""The serving half of a closed loop, shared by ``closed_loop.py`` and ``capstone/run.py``.

Given a trained run, :func:`close_the_loop` does what an operator would, with the product's own commands and
routes: register the bundle (champion = challenger = version 1), serve it with ``kiln serve`` (the challenger
in shadow, every request body in the prediction log), replay clean then shifted traffic, run ``kiln monitor
watch --once`` on each window (the drift alert reaches a local webhook), POST the true labels as feedback,
``kiln retrain`` (judged on fresh data, then shadow and canary on the live server, then promoted), and
finally replay more shifted traffic with the replaced champion in the shadow arm, so the prediction log
shows both versions answering the same inputs. It waits on events (readiness, log rows, the challenger's
reload), never on fixed sleeps, and returns the figures it printed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from PIL import Image

from torchkiln.serve.predlog import read_predictions

KILN = Path(sys.executable).parent / "kiln"
Item = tuple[bytes, str]  # an encoded image and its true label


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
    """The shift: brightness x 0.5 (a new scanner, a new camera), encoded as PNG again."""
    img = Image.open(io.BytesIO(png))
    buf = io.BytesIO()
    Image.eval(img, lambda v: v // 2).save(buf, format="PNG")
    return buf.getvalue()


def environment(work: Path) -> tuple[dict[str, str], str]:
    """The environment every command of the loop runs in (MLflow store, registry cache and admin token under
    ``work``) and the admin token."""
    token = os.environ.get("KILN_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'runs' / 'mlflow.db'}",  # runs and registry
        "KILN_CACHE_DIR": str(work / "cache"),  # the registry's downloads
        "KILN_ADMIN_TOKEN": token,  # kiln retrain's --admin-token
        "KILN_SERVE_ADMIN_TOKEN": token,  # kiln serve's admin_token
    }
    return env, token


@dataclass
class Loop:
    """What the loop's steps share: the model's name, where everything goes, and its settings."""

    model: str
    work: Path
    env: dict[str, str]
    token: str
    window: int = 300  # the drift check's window (inputs)
    retrain_epochs: int = 4
    canary_weight: float = 0.25
    retrain_settings: Sequence[str] = ()  # more `kiln retrain --set KEY=VALUE` gates
    require_promotion: bool = True  # exit when kiln retrain does not promote (else: report it and go on)
    log_url: str = ""
    hook: Webhook | None = None
    figures: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log_url = self.log_url or f"sqlite:///{self.work / 'serve' / 'predictions.db'}"


def register(loop: Loop, run: Path) -> str:
    line = kiln(
        "registry", "register", str(run / "bundle"), "--name", loop.model, "--alias", "champion", env=loop.env
    )
    version = line.rsplit("/", 1)[-1]
    kiln("registry", "alias", loop.model, version, "challenger", env=loop.env)
    return version


class Server:
    """`kiln serve` in a subprocess, with the challenger in shadow and every request body logged."""

    def __init__(self, loop: Loop) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = loop.work / "serve.yaml"
        self.config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "models": [
                        {
                            "name": loop.model,
                            "uri": f"models:/{loop.model}@champion",
                            "challenger": f"models:/{loop.model}@challenger",
                            "shadow": True,
                        }
                    ],
                    "log_url": loop.log_url,
                    "log_payload_sample_rate": 1.0,  # keep every body: kiln retrain trains on them
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        cmd = [str(KILN), "serve", "--config", str(self.config), "--port", str(self.port)]
        print(
            "$ kiln serve --config",
            self.config,
            "--port",
            self.port,
            "  # admin token: $KILN_SERVE_ADMIN_TOKEN",
        )
        self.proc = subprocess.Popen(
            cmd, env=loop.env, stdout=subprocess.DEVNULL, stderr=(loop.work / "serve.log").open("w")
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


def replay(client: httpx.Client, model: str, items: list[Item], *, label: bool = False) -> list[dict]:
    """Send one request per image, 4 at a time; with `label`, POST each true label as feedback. A request
    the server refuses is kept with its status (and printed by the caller), not raised."""

    def one(item: Item) -> dict:
        png, truth = item
        try:
            r = client.post(f"/v1/models/{model}/predict", json={"image": base64.b64encode(png).decode()})
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


def wait_logged(loop: Loop, ids: set[str], *, shadow: bool = False, timeout: float = 60) -> int:
    """Wait until every request in `ids` has its answered row in the prediction log (with `shadow`, also
    its shadow row, for at most `timeout`: the server drops a shadow call it cannot take). Returns the
    number of shadow rows of `ids`."""
    deadline = time.monotonic() + timeout
    while True:
        rows = read_predictions(loop.log_url, model=loop.model, limit=4 * len(ids) + 100)
        answered = ids <= {r.request_id for r in rows if not r.shadow}
        mirrored = ids & {r.request_id for r in rows if r.shadow}
        if answered and (not shadow or mirrored == ids or time.monotonic() > deadline):
            return len(mirrored)
        if time.monotonic() > deadline:
            raise SystemExit(f"the prediction log did not get the {len(ids)} requests within {timeout} s")
        time.sleep(0.1)


# --- the watch loop and its webhook --------------------------------------------------------------------


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


def watch_once(loop: Loop, name: str) -> dict:
    assert loop.hook is not None
    out = loop.work / "monitor" / name
    before = len(loop.hook.events)
    kiln(
        "monitor", "watch", loop.model, "--log-url", loop.log_url, "--window", str(loop.window), "--once",
        "--raise-after", "1", "--state", str(loop.work / "monitor" / "state.json"),
        "--webhook", loop.hook.url, "--out", str(out),
        env=loop.env,
        echo=False,
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for v in report["versions"]:
        if v["shadow"]:  # between retrains the shadow arm is the champion's own version: the same figures
            print(f"  version {v['version']} (shadow): {v['items']} inputs, verdict {v['verdict']!r}")
            continue
        fired = [r["key"] for r in v["drift"].get("rows", []) if r["drifted"]]
        scores = ", ".join(f"{k} {s:.2f}" for k, s in sorted(v.get("scores", {}).items()))
        print(
            f"  version {v['version']}: {v['items']} inputs, verdict {v['verdict']!r}; scores (1.0 = "
            f"threshold): {scores}"
        )
        if fired:
            print(f"    rows that fire: {', '.join(fired)}")
    new = loop.hook.events[before:]
    print(f"  webhook {loop.hook.url}: {len(new)} event(s)")
    for e in new:
        print(
            f"    {e['event']}: {e['model']} version {e['version']}{' (shadow)' if e['shadow'] else ''}, "
            f"{e['items']} items, drifted {e['drifted']}"
        )
    loop.figures[f"drift_{name}"] = [v["verdict"] for v in report["versions"] if not v["shadow"]]
    loop.figures[f"alerts_{name}"] = len(new)
    return report


# --- retraining, shadow, canary, promotion -------------------------------------------------------------


def served(client: httpx.Client, model: str) -> dict[str, str]:
    models = client.get("/v1/models").json()["models"]
    return {v["arm"]: v["version"] for m in models if m["name"] == model for v in m["versions"]}


def shadow_traffic(
    client: httpx.Client, model: str, champion: str, items: list[Item], stop: threading.Event, sent: list
) -> None:
    """Wait until the server mirrors to a new challenger (kiln retrain's shadow phase), then send labelled
    shifted traffic, 4 requests at a time, through the shadow and the canary phase until the arms change
    again (promotion or rollback), kiln retrain ends, or the images run out."""
    arms = {"champion": champion, "challenger": champion}
    while not stop.is_set() and (arms := served(client, model))["challenger"] == champion:
        time.sleep(0.2)
    for i in range(0, len(items), 4):
        if stop.is_set() or served(client, model) != arms:
            return
        sent += replay(client, model, items[i : i + 4], label=True)


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def performance(client: httpx.Client, model: str, window: int) -> dict[tuple[str, bool], dict]:
    perf = client.get(f"/v1/models/{model}/performance", params={"window": window}).json()
    return {(v["version"], v["shadow"]): v for v in perf["versions"]}


def show_performance(perf: dict[tuple[str, bool], dict]) -> None:
    for (version, shadow), v in sorted(perf.items()):
        a = v["accuracy"]
        print(
            f"  version {version}{' (shadow)' if shadow else '         '}: accuracy {a['value']:.3f} "
            f"[{a['low']:.3f}, {a['high']:.3f}] on {v['labelled']} labelled inputs"
        )


def retrain(
    loop: Loop, client: httpx.Client, base: str, run: Path, v1: str, shadow_pool: list[Item], n: int
) -> dict:
    """`kiln retrain` on the feedback-labelled bodies of the log, with a thread sending the labelled traffic
    its shadow and canary phases wait for. Returns its decision record; exits unless it promoted."""
    out = loop.work / "retrain"
    cmd = [
        "retrain", str(run / "config.yaml"), "--model", loop.model, "--feedback-from", loop.log_url,
        "--server", base, "--log-url", loop.log_url,
        "--drift-report", str(loop.work / "monitor" / "shifted" / "report.json"),
        "--out", str(out), "--set", f"epochs={loop.retrain_epochs}",
        "--set", f"replay_items={n}", "--set", f"canary_weight={loop.canary_weight}",
    ]  # fmt: skip
    for setting in loop.retrain_settings:
        cmd += ["--set", setting]
    print("$ kiln", " ".join(cmd), '--admin-token "$KILN_ADMIN_TOKEN"  # from the environment')
    stop, sent = threading.Event(), []
    driver = threading.Thread(target=shadow_traffic, args=(client, loop.model, v1, shadow_pool, stop, sent))
    driver.start()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(KILN), *cmd], env=loop.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "retrain.log").open("w", encoding="utf-8") as logfile:
        for line in proc.stdout or ():  # its log, live: the steps and the challenger's epochs
            logfile.write(line)
            if line.startswith(("note: step", "epoch ", "error", "Error")):
                print("  ", line.rstrip()[:160], flush=True)
    proc.wait()
    stop.set()
    driver.join()
    if proc.returncode != 0 or not (out / "decision.json").is_file():
        raise SystemExit(f"kiln retrain failed (exit status {proc.returncode}); see {out / 'retrain.log'}")
    d = json.loads((out / "decision.json").read_text(encoding="utf-8"))
    d["_sent"] = sent
    t = d["test"]
    print(f"  took {time.monotonic() - t0:.0f} s; the full log is {out / 'retrain.log'}")
    print(f"  data: {d['data']['counts']} (fresh test set: {d['data']['test_items']} shifted images)")
    print(
        f"  fresh shifted test set: champion {d['champion']['metrics']['accuracy']:.3f}, challenger "
        f"{d['challenger']['metrics']['accuracy']:.3f}; McNemar b={t['b']} c={t['c']}, one-sided "
        f"mid-p {t['p_midp']:.3g} (exact {t['p_exact']:.3g}), alpha {t['alpha']}"
    )
    _print_live(d, sent)
    print(f"  outcome: {d['outcome']}: {d['reason']}")
    if d["outcome"] != "promoted" and loop.require_promotion:
        raise SystemExit("the challenger was not promoted; see the decision record above")
    return d


def _print_live(d: dict, sent: list[dict]) -> None:
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
            f"  shadow on the live server ({len(sent)} labelled requests sent by a thread{failures(sent)}): "
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


def after_promotion(
    loop: Loop, client: httpx.Client, v1: str, v2: str, after: list[Item], phases: dict
) -> None:
    """More shifted traffic, labelled, with the replaced champion back in the shadow arm: both versions
    answer the same inputs (kiln retrain leaves the challenger alias on the winner)."""
    kiln("registry", "alias", loop.model, v1, "challenger", env=loop.env)
    r = client.post(
        "/admin/reload",
        params={"model": loop.model, "force": "false"},
        headers={"Authorization": f"Bearer {loop.token}"},
    )
    if r.status_code != 200:
        raise SystemExit(f"POST /admin/reload answered {r.status_code}: {r.text}")
    print(f"  POST /admin/reload: the server now serves {served(client, loop.model)}")
    after_got = replay(client, loop.model, after, label=True)
    mirrored = wait_logged(loop, {r["id"] for r in ok(after_got)}, shadow=True, timeout=30)
    print(
        f"  {len(after_got)} shifted requests: accuracy {accuracy(after_got):.3f}{failures(after_got)} "
        f"({mirrored} shadow answers by version {v1})"
    )
    phases["after promotion"] = after_got
    phase_of = {r["id"]: name for name, rs in phases.items() for r in ok(rs)}
    rows = [r for r in read_predictions(loop.log_url, model=loop.model) if r.request_id in phase_of]
    print(f"  the prediction log ({len(rows)} rows): which version answered, per phase")
    for name in phases:
        answered = Counter(r.version for r in rows if phase_of[r.request_id] == name and not r.shadow)
        mirrored_by = Counter(r.version for r in rows if phase_of[r.request_id] == name and r.shadow)
        print(f"    {name:16s} answered by {dict(answered)}, shadow answers by {dict(mirrored_by)}")
    labelled = sum(len(ok(rs)) for name, rs in phases.items() if name != "clean")
    print(f"  live accuracy, GET /v1/models/{loop.model}/performance?window={labelled} (every label):")
    show_performance(every := performance(client, loop.model, labelled))
    print(f"  ?window={len(ok(after_got))}: only the inputs after the promotion:")
    show_performance(now := performance(client, loop.model, len(ok(after_got))))
    old_v, new_v = now.get((v1, True)), now.get((v2, False))
    if old_v and new_v:
        before = every[(v1, False)]["accuracy"]["value"]
        print(
            f"  shifted traffic: version {v1} answered {before:.3f} before the promotion; after it, on the "
            f"same inputs, version {v2} {new_v['accuracy']['value']:.3f} vs version {v1} "
            f"{old_v['accuracy']['value']:.3f} (clean traffic: {accuracy(phases['clean']):.3f})"
        )
        loop.figures["after"] = {"new": new_v["accuracy"]["value"], "old": old_v["accuracy"]["value"]}


def close_the_loop(
    loop: Loop,
    run: Path,
    *,
    clean: list[Item],
    shifted: list[Item],
    shadow_pool: list[Item],
    after: list[Item],
) -> dict:
    """Register ``run``'s bundle, serve it, and take it through drift, feedback, retraining and promotion.

    Returns the figures it printed (``loop.figures``) with the versions and the decision record.
    """
    step("Register the champion and serve it (the challenger alias on the same version, in shadow)")
    v1 = register(loop, run)
    print(f"  models:/{loop.model}@champion = models:/{loop.model}@challenger = version {v1}")
    loop.hook = Webhook()
    server = Server(loop)
    try:
        with httpx.Client(base_url=server.base, timeout=60) as client:
            t0 = time.monotonic()
            server.wait_ready(client)
            print(
                f"  ready in {time.monotonic() - t0:.1f} s on {server.base}: "
                f"serving {served(client, loop.model)}"
            )

            step("Traffic: clean held-out images, then shifted ones")
            got = replay(client, loop.model, clean)
            wait_logged(loop, {r["id"] for r in ok(got)})
            print(f"  {len(got)} clean requests: accuracy {accuracy(got):.3f} (client side){failures(got)}")
            step("Drift check on the clean window (kiln monitor watch --once, webhook receiver)")
            watch_once(loop, "clean")
            shifted_got = replay(client, loop.model, shifted)
            wait_logged(loop, {r["id"] for r in ok(shifted_got)})
            print(
                f"\n  {len(shifted_got)} shifted requests: accuracy {accuracy(shifted_got):.3f}"
                f"{failures(shifted_got)}"
            )
            step("Drift check on the shifted window")
            watch_once(loop, "shifted")

            step("Feedback: the true labels of the shifted images (POST /v1/feedback)")
            for r in ok(shifted_got):
                fb = client.post("/v1/feedback", json={"request_id": r["id"], "label": r["truth"]})
                if fb.status_code != 201:
                    raise SystemExit(f"POST /v1/feedback answered {fb.status_code}: {fb.text}")
            print(f"  {len(ok(shifted_got))} labels stored; GET /v1/models/{loop.model}/performance:")
            show_performance(performance(client, loop.model, len(shifted_got)))

            step("kiln retrain: fine-tune on the labelled shifted images, judge, shadow, canary, promote")
            d = retrain(loop, client, server.base, run, v1, shadow_pool, len(shifted))
            v2 = d["challenger"].get("version")
            print(f"  the server now serves {served(client, loop.model)}")
            phases = {"clean": got, "shifted": shifted_got, "shadow, canary": d.pop("_sent")}
            if d["outcome"] == "promoted":
                step("After the promotion: more shifted traffic, with labels, the old champion in shadow")
                after_promotion(loop, client, v1, v2, after, phases)
    finally:
        code = server.stop()
        loop.hook.httpd.shutdown()
        print(f"\nserver stopped (exit status {code})")
    loop.figures |= {"champion": v1, "challenger": v2, "decision": d, "serve_config": str(server.config)}
    return loop.figures
