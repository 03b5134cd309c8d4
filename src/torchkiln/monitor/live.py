"""``kiln retrain``'s steps on a running server: reload it after a promotion and check every worker."""

from __future__ import annotations

from typing import Any

from torchkiln.core.errors import ServeError


def reload_and_verify(server: str, admin_token: str | None, model: str, version: str) -> dict[str, Any]:
    """``POST /admin/reload?model=NAME`` then check, from the answer and ``GET /admin/models``, that every
    worker serves ``version`` as the champion.

    Returns:
        ``{"workers": {"total": n, "serving": n}, "results": ..., "champion": version}``.

    Raises:
        ServeError: the server is unreachable, refuses the token, answers 409 (a worker did not load it),
            or its champion is another version after the reload.

    Example:
        >>> reload_and_verify("http://127.0.0.1:8000", "s3cret", "digits", "3")["workers"]
        {'total': 2, 'serving': 2}
    """
    import httpx

    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    base = server.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            r = client.post("/admin/reload", params={"model": model})
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            if r.status_code != 200:
                raise ServeError(
                    f"The server at {base} did not take the new champion (version {version}) of '{model}': "
                    f"POST /admin/reload answered {r.status_code}: {body.get('detail', r.text[:300])}. The "
                    f"alias has moved; fix the cause and POST /admin/reload again, or roll back with: kiln "
                    f"registry rollback {model}"
                )
            models = client.get("/admin/models").json()["models"]
    except httpx.HTTPError as exc:
        raise ServeError(f"Cannot reach the server at {base} ({exc}). Check --server.") from exc
    workers = body["workers"]
    served = {v["arm"]: v["version"] for m in models if m["name"] == model for v in m["versions"]}
    if served.get("champion") != version or workers["serving"] != workers["total"]:
        raise ServeError(
            f"After the reload the server at {base} serves {served.get('champion')} as the champion of "
            f"'{model}' on {workers['serving']} of {workers['total']} workers; expected version {version} on "
            f"all. Is it serving models:/{model}@champion? Roll back with: kiln registry rollback {model}"
        )
    return {"workers": workers, "results": body.get("results"), "champion": version}
