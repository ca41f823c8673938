"""OAuth's device authorization grant (RFC 8628), for `omicsfs login` on a machine without a browser.

The user approves a short code in a browser anywhere, while this polls the platform for the token
at the interval the platform asked for. Platforms name the fields their own way (BaseSpace sends
the device code as `code` with `grant_type=device`), so they give the requests; the protocol is here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from omicsfs.errors import OmicsfsError, PlatformError
from omicsfs.http import Http

if TYPE_CHECKING:
    from omicsfs.login import Prompt

#: RFC 8628: the poll interval when the server names none, and what each `slow_down` adds to it.
DEFAULT_INTERVAL = 5.0
SLOW_DOWN_STEP = 5.0


async def device_flow(
    http: Http,
    prompt: Prompt,
    *,
    what: str,
    authorize_url: str,
    authorize_form: dict[str, str],
    token_url: str,
    token_form: Callable[[str], dict[str, str]],
) -> str:
    """The token, once the user approved the code this shows them.

    `token_form(device_code)` is the body of each poll (platforms name the code and grant type
    their own way). Pending polls wait; `slow_down` lengthens the interval for good; a denied or
    expired code ends it with a message saying so.
    """
    response = await http.request("POST", authorize_url, what=f"{what}: device authorization", form=authorize_form, ok=_answered)
    grant = _body(response)
    if response.status_code != 200 or "error" in grant:
        raise _refused(what, authorize_url, response, grant)
    try:
        device_code, user_code = str(grant["device_code"]), str(grant["user_code"])
        verification_uri = str(grant["verification_uri"])
        interval = float(grant.get("interval") or DEFAULT_INTERVAL)
        expires_in = float(grant["expires_in"]) if grant.get("expires_in") else None
    except (KeyError, TypeError, ValueError):
        raise PlatformError(f"{what}: the device authorization answer lacks device_code, user_code or verification_uri") from None
    deadline = trio.current_time() + expires_in if expires_in else None
    direct = grant.get("verification_with_code_uri") or grant.get("verification_uri_complete")
    lines = [f"To let omicsfs in, open {direct}" if direct else f"To let omicsfs in, open {verification_uri}",
             f"{'or go to ' + verification_uri + ' and ' if direct else 'and '}enter the code {user_code}."]
    if expires_in:
        left = f"{expires_in / 60:.0f} min" if expires_in >= 120 else f"{expires_in:.0f} s"
        lines.append(f"Waiting for your approval (the code expires in {left})...")
    prompt.say("\n".join(lines))
    expired = f"{what}: the code {user_code} expired before it was approved; nothing was saved (run omicsfs login again)"
    while True:
        await trio.sleep(interval)
        if deadline is not None and trio.current_time() > deadline:
            raise OmicsfsError(expired)
        response = await http.request("POST", token_url, what=f"{what}: token", form=token_form(device_code), ok=_answered)
        body = _body(response)
        if response.status_code == 200 and body.get("access_token"):
            return str(body["access_token"])
        error = body.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += SLOW_DOWN_STEP
            continue
        if error == "access_denied":
            raise OmicsfsError(f"{what}: the request was denied at {verification_uri}; nothing was saved")
        if error == "expired_token":
            raise OmicsfsError(expired)
        raise _refused(what, token_url, response, body)


def _answered(status: int) -> bool:
    """Answers read here rather than retried or raised by `Http`: RFC 8628 says "pending",
    "denied" and a bad client with 400 or 401 and an `error` in the body (5xx and 429 are retried)."""
    return status < 500 and status != 429


def _body(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _refused(what: str, url: str, response, body: dict) -> PlatformError:
    detail = body.get("error_description") or body.get("error") or response.reason_phrase
    hint = "; check client_id and client_secret in the table" if body.get("error") == "invalid_client" else ""
    return PlatformError(f"{what}: POST {url} answered {response.status_code}: {detail}{hint}", status=response.status_code)
