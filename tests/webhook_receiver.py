"""A webhook receiver for tests and benchmarks: a real HTTP server process on 127.0.0.1.

    python -m tests.webhook_receiver --port 0 --log FILE --secrets FILE [--control FILE]

Prints its URL on the first line of stdout. Every request is checked with the independent
``standardwebhooks`` package against the secret registered for its path (``--secrets``: a
JSON object path -> secret, re-read when it changes) and logged as one JSON line: receipt
time, path, webhook-id, whether the signature verified (null: no
secret registered for the path within 5 s, answered 503), the status answered, the events'
ids and commit times, and the body's cursor.

``--control`` (JSON: path or "*" -> mode, re-read when it changes) sets the answer: ``ok``
(200), a status code such as ``500`` or ``410``, ``timeout`` (hold the request 60 s),
``redirect`` (307 to /elsewhere). Refusing connections is done by stopping the process.
``--light`` (benchmarks) finds the events' ids and times by pattern instead of parsing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import h11
import trio
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

MAX_BODY = 64 * 1024 * 1024
_EVENT_HEAD = re.compile(rb'\{"id":([0-9]+),"seq":[^,]*,"did":(?:null|"[^"]*"),"time_us":([0-9]+)')


class _Watched:
    """A JSON file re-read whenever its modification time changes."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stamp: float | None = None
        self._value: dict[str, str] = {}

    def get(self) -> dict[str, str]:
        if self._path is None:
            return {}
        try:
            stamp = os.stat(self._path).st_mtime_ns
        except FileNotFoundError:
            return {}
        if stamp != self._stamp:
            try:
                self._value = json.loads(self._path.read_text() or "{}")
                self._stamp = stamp
            except json.JSONDecodeError:  # caught mid-write: keep the previous value
                pass
        return self._value


class Receiver:
    """Verifies, logs and answers webhook requests."""

    def __init__(self, log_path: Path, secrets: Path, control: Path | None,
                 light: bool = False) -> None:
        self._log = log_path.open("a", buffering=1)
        self._light = light
        self._secrets = _Watched(secrets)
        self._control = _Watched(control)
        self._verifiers: dict[str, Webhook] = {}

    def _verified(self, path: str, body: bytes, headers: dict[str, str]) -> bool | None:
        secret = self._secrets.get().get(path)
        if secret is None:
            return None  # not registered yet (the test learns it from `create`): 503
        verifier = self._verifiers.get(secret)
        if verifier is None:
            verifier = self._verifiers[secret] = Webhook(secret)
        try:
            verifier.verify(body, headers)
        except WebhookVerificationError:
            return False
        return True

    async def answer(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[str, int]:
        """Log the request; returns (mode, status)."""
        received = time.time()
        # A test learns a secret from `subscriptions create`, after which the service may
        # send at once: give the test a moment to register it.
        with trio.move_on_after(5):
            while path not in self._secrets.get():
                await trio.sleep(0.02)
        controls = self._control.get()
        mode = str(controls.get(path, controls.get("*", "ok")))
        verified = self._verified(path, body, headers)
        status = 200 if mode in ("ok", "timeout") else 307 if mode == "redirect" else int(mode)
        if verified is None:
            status = 503
        elif not verified:
            status = 400
        ids: list[int] = []
        times: list[int] = []
        cursor = None
        if self._light:
            # Benchmarks: each event starts {"id":N,"seq":S,"did":D,"time_us":T (the log's
            # EVENT_JSON), so a pattern finds them without parsing whole bodies.
            for found in _EVENT_HEAD.finditer(body):
                ids.append(int(found[1]))
                times.append(int(found[2]))
            cursor = ids[-1] if ids else None
        else:
            try:
                document = json.loads(body)
                ids = [e["id"] for e in document["events"]]
                times = [e["time_us"] for e in document["events"]]
                cursor = document.get("cursor")
            except (ValueError, KeyError, TypeError):
                pass
        entry = {"t": received, "path": path, "webhook_id": headers.get("webhook-id"),
                 "verified": verified, "mode": mode,
                 # 0: held past the sender's timeout, never answered in time.
                 "status": 0 if mode == "timeout" and status == 200 else status, "ids": ids,
                 "times": times, "cursor": cursor, "bytes": len(body)}
        self._log.write(json.dumps(entry) + "\n")
        return mode, status

    async def serve(self, stream: trio.SocketStream) -> None:
        """One connection: keep-alive requests until the client closes."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        try:
            while True:
                request: h11.Request | None = None
                body = bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        conn.receive_data(data)
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                mode, status = await self.answer(request.target.decode(), bytes(body), headers)
                if mode == "timeout":
                    await trio.sleep(60)
                extra = [(b"location", b"/elsewhere")] if status == 307 else []
                reply = b'{"ok":true}' if status == 200 else b'{"error":"as configured"}'
                await stream.send_all(conn.send(h11.Response(
                    status_code=status, headers=[(b"content-type", b"application/json"),
                                                 (b"content-length", b"%d" % len(reply)),
                                                 *extra])))
                await stream.send_all(conn.send(h11.Data(data=reply)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError,
                ConnectionError):
            return
        finally:
            await stream.aclose()


async def main(args: argparse.Namespace) -> None:
    receiver = Receiver(args.log, args.secrets, args.control, args.light)
    listeners = await trio.open_tcp_listeners(args.port, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    await trio.serve_listeners(receiver.serve, listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--secrets", type=Path, required=True)
    parser.add_argument("--control", type=Path)
    parser.add_argument("--light", action="store_true",
                        help="find event ids and times by pattern, not by parsing (benchmarks)")
    trio.run(main, parser.parse_args())
