"""pusher-http-python 3.3 and Pysher 1.0 against the server (protocol.md 0.4, 5.2.3, 5.6, D19, D35).

The Python SDK signs body_md5 on every request (also GET), serialises JSON with spaces and
\\u escapes, and posts terminate_connections without the /apps/{id} prefix; Pysher speaks
protocol 6, pings with data "" and signs channel_data locally with json.dumps.
"""

import base64
import binascii
import http.server
import json
import logging
import os
import threading
import time
import unittest
import uuid
from urllib.parse import urlsplit

import nacl.secret
import pusher
import pusher.errors
import pysher
from pysher.channel import Channel as PysherChannel
import websocket

URLS = [u.strip() for u in os.environ.get("PT_URLS", "http://127.0.0.1:8080").split(",") if u.strip()]
APP = {"id": "1000001", "key": "pt-key", "secret": "pt-secret"}
# Posts its webhooks to a receiver this suite runs on 127.0.0.1:29614 (resound.toml).
HOOKS_APP = {"id": "1000012", "key": "pt-pyhooks-key", "secret": "pt-pyhooks-secret"}
HOOKS_PORT = 29614
MASTER_KEY_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
WAIT = 4.0

logging.getLogger("pysher").setLevel(logging.CRITICAL)


def node(i=0):
    u = urlsplit(URLS[i % len(URLS)])
    tls = u.scheme == "https"
    return {"host": u.hostname, "port": u.port or (443 if tls else 80), "tls": tls}


def server_sdk(i=0):
    n = node(i)
    return pusher.Pusher(
        app_id=APP["id"], key=APP["key"], secret=APP["secret"], ssl=n["tls"], host=n["host"],
        port=n["port"], encryption_master_key_base64=MASTER_KEY_B64, timeout=5,
    )


def uniq(prefix):
    return "%s%s" % (prefix, uuid.uuid4().hex[:12])


class RawClient:
    """A websocket-client connection that records every JSON frame."""

    def __init__(self, i=0, app=None):
        n = node(i)
        scheme = "wss" if n["tls"] else "ws"
        key = (app or APP)["key"]
        url = "%s://%s:%d/app/%s?protocol=7&client=python-tests&version=1.0" % (scheme, n["host"], n["port"], key)
        self.ws = websocket.create_connection(url, timeout=WAIT)
        self.frames = []
        self.close_code = None
        est = self.expect(lambda m: m.get("event") == "pusher:connection_established", "connection was not established")
        self.socket_id = json.loads(est["data"])["socket_id"]

    def send(self, event, data, channel=None):
        msg = {"event": event, "data": data}
        if channel:
            msg["channel"] = channel
        self.ws.send(json.dumps(msg))

    def expect(self, pred, what, timeout=WAIT):
        for m in self.frames:
            if pred(m):
                self.frames.remove(m)
                return m
        end = time.time() + timeout
        while time.time() < end:
            self.ws.settimeout(max(0.05, end - time.time()))
            try:
                op, payload = self.ws.recv_data(control_frame=False)
            except websocket.WebSocketTimeoutException:
                break
            except websocket.WebSocketConnectionClosedException:
                raise AssertionError("%s (connection closed, code %s)" % (what, self.close_code))
            if op == websocket.ABNF.OPCODE_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                raise AssertionError("%s (connection closed with %s)" % (what, self.close_code))
            m = json.loads(payload.decode("utf-8"))
            if pred(m):
                return m
            self.frames.append(m)
        raise AssertionError("%s within %.1f s; other frames: %s" % (what, timeout, self.frames))

    def expect_close(self, what, timeout=WAIT):
        end = time.time() + timeout
        while time.time() < end:
            self.ws.settimeout(max(0.05, end - time.time()))
            try:
                op, payload = self.ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                break
            except websocket.WebSocketConnectionClosedException:
                return self.close_code
            if op == websocket.ABNF.OPCODE_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                return self.close_code
            if op == websocket.ABNF.OPCODE_TEXT:
                self.frames.append(json.loads(payload.decode("utf-8")))
        raise AssertionError(what)

    def subscribe(self, channel, auth=None):
        data = {"channel": channel, "auth": ""}
        if auth:
            data.update(auth)
        self.send("pusher:subscribe", data)
        m = self.expect(
            lambda m: (m.get("event") == "pusher_internal:subscription_succeeded" and m.get("channel") == channel)
            or m.get("event") == "pusher:error",
            "no reply to the subscription of %s" % channel,
        )
        return m

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


class PysherClient:
    """Pysher connected to the server under test."""

    def __init__(self, user_data=None, i=0):
        n = node(i)
        self.client = pysher.Pusher(
            APP["key"], secure=n["tls"], custom_host=n["host"], port=n["port"], secret=APP["secret"],
            user_data=user_data, log_level=logging.CRITICAL, reconnect_interval=1,
        )
        self.client.connect()
        end = time.time() + WAIT
        while time.time() < end and self.client.connection.state != "connected":
            time.sleep(0.02)
        if self.client.connection.state != "connected":
            raise AssertionError("Pysher did not connect (state %s)" % self.client.connection.state)
        self.socket_id = self.client.connection.socket_id

    def subscribe(self, channel):
        """pysher.Pusher.subscribe, with the Channel registered before the frame is sent.

        Pysher sends pusher:subscribe first and registers the Channel afterwards, so against a
        server on the same machine the reply can arrive before anything listens for it. The
        frames on the wire are the ones Pysher builds.
        """
        done = threading.Event()
        result = {}
        ch = PysherChannel(channel, self.client.connection)

        def ok(data):
            result["data"] = data
            done.set()

        ch.bind("pusher_internal:subscription_succeeded", ok)
        self.client.channels[channel] = ch
        data = {"channel": channel}
        if channel.startswith("presence-"):
            data["auth"] = self.client._generate_presence_token(channel)
            data["channel_data"] = json.dumps(self.client.user_data)
        elif channel.startswith("private-"):
            data["auth"] = self.client._generate_auth_token(channel)
        self.client.connection.send_event("pusher:subscribe", data)
        if not done.wait(WAIT):
            raise AssertionError("Pysher subscription to %s did not succeed" % channel)
        return ch, result["data"]

    @staticmethod
    def collector(channel, event):
        got = []
        ev = threading.Event()

        def cb(data):
            got.append(data)
            ev.set()

        channel.bind(event, cb)
        return got, ev

    def close(self):
        self.client.disconnect(timeout=2)


class PythonSdkTests(unittest.TestCase):
    def setUp(self):
        self.sdk = server_sdk()
        self.cleanup = []

    def tearDown(self):
        for c in self.cleanup:
            c.close()

    def raw(self, i=0):
        c = RawClient(i)
        self.cleanup.append(c)
        return c

    def pysher(self, user_data=None, i=0):
        c = PysherClient(user_data, i)
        self.cleanup.append(c)
        return c

    def test_pysher_connection_survives_its_empty_string_ping(self):
        p = self.pysher()
        end = time.time() + WAIT
        while time.time() < end and not p.client.connection.pong_received:
            time.sleep(0.02)
        self.assertTrue(p.client.connection.pong_received, "Pysher's pusher:ping with data \"\" was not answered with pusher:pong")
        time.sleep(0.3)
        self.assertEqual(p.client.connection.socket_id, p.socket_id, "Pysher had to reconnect (its ping got an error?)")

    def test_trigger_reaches_pysher(self):
        name = uniq("py-news-")
        p = self.pysher(i=1)
        ch, _ = p.subscribe(name)
        got, ev = p.collector(ch, "py-event")
        self.assertEqual(self.sdk.trigger(name, "py-event", {"a": 1, "b": "é"}), {}, "trigger must answer {}")
        self.assertTrue(ev.wait(WAIT), "event triggered by pusher-http-python did not reach Pysher")
        self.assertEqual(
            got[0], json.dumps({"a": 1, "b": "é"}, ensure_ascii=False),
            "event data must arrive exactly as the Python SDK serialised it (json.dumps, ensure_ascii=False)",
        )

    def test_pysher_presence_with_python_serialised_channel_data(self):
        name = uniq("presence-py-")
        p = self.pysher(user_data={"user_id": "py-1", "user_info": {"name": "Zoë"}})
        _, data = p.subscribe(name)
        presence = json.loads(data)["presence"]
        self.assertEqual(presence["ids"], ["py-1"], "Pysher's json.dumps channel_data must be accepted and listed")
        self.assertEqual(presence["hash"]["py-1"], {"name": "Zoë"}, "presence hash must carry the user_info")

    def test_pysher_private_channel(self):
        p = self.pysher()
        p.subscribe(uniq("private-py-"))

    def test_authenticate_presence_token_accepted(self):
        r = self.raw()
        name = uniq("presence-auth-")
        token = self.sdk.authenticate(name, r.socket_id, {"user_id": 42, "user_info": {"name": "Zoë"}})
        self.assertIn(": ", token["channel_data"], "harness: the Python SDK serialises with spaces")
        m = r.subscribe(name, {"auth": token["auth"], "channel_data": token["channel_data"]})
        self.assertEqual(m["event"], "pusher_internal:subscription_succeeded", "Python SDK presence token refused: %s" % m)
        self.assertEqual(json.loads(m["data"])["presence"]["ids"], ["42"], "numeric user_id must be reported as a string")

    def test_socket_id_exclusion(self):
        name = uniq("py-excl-")
        a = self.pysher()
        b = self.pysher(i=1)
        cha, _ = a.subscribe(name)
        chb, _ = b.subscribe(name)
        got_a, _ = a.collector(cha, "e")
        got_b, ev_b = b.collector(chb, "e")
        self.sdk.trigger(name, "e", {"x": 1}, socket_id=a.socket_id)
        self.assertTrue(ev_b.wait(WAIT), "non-excluded Pysher did not receive the event")
        time.sleep(0.3)
        self.assertEqual(got_a, [], "the socket named by socket_id received the event")

    def test_data_size_limit(self):
        name = uniq("py-size-")
        self.assertEqual(self.sdk.trigger(name, "e", "x" * 10240), {}, "10240-byte data must be accepted")
        with self.assertRaises(pusher.errors.PusherBadStatus) as cm:
            self.sdk.trigger(name, "e", "x" * 10241)
        self.assertTrue(str(cm.exception).startswith("413"), "10241-byte data must get 413, got %s" % cm.exception)

    def test_trigger_batch_limits(self):
        name = uniq("py-batch-")
        ten = [{"channel": name, "name": "b%d" % i, "data": {"i": i}} for i in range(10)]
        self.assertEqual(self.sdk.trigger_batch(ten), {}, "batch of 10 without info must answer {}")
        eleven = [{"channel": name, "name": "b%d" % i, "data": {"i": i}} for i in range(11)]
        with self.assertRaises(pusher.errors.PusherBadRequest, msg="a batch of 11 must get 400"):
            self.sdk.trigger_batch(eleven)

    def test_channels_info_with_body_md5_on_get(self):
        name = uniq("presence-pyinfo-")
        r = self.raw()
        m = r.subscribe(name, self.sdk.authenticate(name, r.socket_id, {"user_id": "u1"}))
        self.assertEqual(m["event"], "pusher_internal:subscription_succeeded", "Python SDK presence token refused: %s" % m)
        try:
            info = self.sdk.channels_info(prefix_filter=name, attributes=["user_count"])
        except pusher.errors.PusherBadAuth as e:
            self.fail("GET signed with body_md5 of the empty body was refused (protocol.md 0.4 rule 2): %s" % e)
        self.assertEqual(info, {"channels": {name: {"user_count": 1}}}, "channels_info with prefix and user_count")
        with self.assertRaises(pusher.errors.PusherBadRequest, msg="user_count without presence- prefix must get 400"):
            self.sdk.channels_info(attributes=["user_count"])

    def test_channel_info_and_users_info(self):
        name = uniq("presence-pyone-")
        r = self.raw()
        r.subscribe(name, self.sdk.authenticate(name, r.socket_id, {"user_id": 7}))
        info = self.sdk.channel_info(name, ["user_count", "subscription_count"])
        self.assertEqual(info, {"occupied": True, "user_count": 1, "subscription_count": 1}, "channel_info response shape")
        self.assertEqual(self.sdk.users_info(name), {"users": [{"id": "7"}]}, "users must be listed with string ids")
        self.assertEqual(self.sdk.users_info(uniq("presence-empty-")), {"users": []}, "unoccupied presence channel must answer {\"users\":[]}")
        with self.assertRaises(pusher.errors.PusherBadRequest, msg="users of a non-presence channel must get 400"):
            self.sdk.users_info(uniq("public-"))

    def test_signin_with_python_user_data_and_send_to_user(self):
        r = self.raw(i=1)
        uid = uniq("pyuser-")
        token = self.sdk.authenticate_user(r.socket_id, {"id": uid, "user_info": {"name": "Py"}})
        r.send("pusher:signin", token)
        m = r.expect(lambda m: m.get("event") in ("pusher:signin_success", "pusher:error"), "no reply to signin")
        self.assertEqual(m["event"], "pusher:signin_success", "Python SDK user token (json.dumps with spaces) refused: %s" % m)
        self.assertEqual(self.sdk.send_to_user(uid, "note", {"n": 1}), {}, "send_to_user must answer {}")
        e = r.expect(lambda m: m.get("event") == "note", "send_to_user did not reach the signed-in connection")
        self.assertEqual(e["channel"], "#server-to-user-%s" % uid, "server-to-user events must carry channel #server-to-user-{id}")

    def test_terminate_user_connections_prefixless_path(self):
        r = self.raw()
        bystander = self.raw()
        uid = uniq("pyterm-")
        r.send("pusher:signin", self.sdk.authenticate_user(r.socket_id, {"id": uid}))
        r.expect(lambda m: m.get("event") == "pusher:signin_success", "signin failed")
        try:
            res = self.sdk.terminate_user_connections(uid)
        except pusher.errors.PusherError as e:
            self.fail("POST /users/{id}/terminate_connections (pusher-http-python path, spec D35) refused: %r" % e)
        self.assertEqual(res, {}, "terminate_connections must answer {}")
        err = r.expect(lambda m: m.get("event") == "pusher:error", "terminated connection got no pusher:error")
        self.assertEqual(
            err["data"]["code"] if isinstance(err["data"], dict) else json.loads(err["data"])["code"], 4009,
            "terminated connection must get pusher:error 4009",
        )
        self.assertEqual(r.expect_close("terminated connection was not closed"), 4009, "terminated connection must close with 4009")
        bystander.send("pusher:ping", {})
        bystander.expect(lambda m: m.get("event") == "pusher:pong", "a connection not signed in as the user was terminated")

    def test_encrypted_trigger_decrypts(self):
        r = self.raw()
        name = uniq("private-encrypted-py-")
        token = self.sdk.authenticate(name, r.socket_id)
        m = r.subscribe(name, {"auth": token["auth"]})
        self.assertEqual(m["event"], "pusher_internal:subscription_succeeded", "encrypted channel token refused: %s" % m)
        self.sdk.trigger(name, "secret", {"card": "4242"})
        e = r.expect(lambda m: m.get("event") == "secret", "encrypted event was not delivered")
        envelope = json.loads(e["data"])
        box = nacl.secret.SecretBox(base64.b64decode(token["shared_secret"]))
        try:
            plain = box.decrypt(base64.b64decode(envelope["ciphertext"]), base64.b64decode(envelope["nonce"]))
        except (nacl.exceptions.CryptoError, binascii.Error, KeyError) as ex:
            self.fail("ciphertext was altered by the server: %s" % ex)
        self.assertEqual(json.loads(plain), {"card": "4242"}, "decrypted payload differs from what the SDK encrypted")

    def test_webhooks_pass_the_python_sdk_validator(self):
        hooks = []

        class Receiver(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hooks.append((self.headers.get("X-Pusher-Key"), self.headers.get("X-Pusher-Signature"), body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", HOOKS_PORT), Receiver)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            r = RawClient(app=HOOKS_APP)
            self.cleanup.append(r)
            ch = uniq("py-hooked-")
            m = r.subscribe(ch)
            self.assertEqual(m["event"], "pusher_internal:subscription_succeeded")
            deadline = time.time() + 5
            while time.time() < deadline and not hooks:
                time.sleep(0.05)
            self.assertTrue(hooks, "no webhook arrived for channel_occupied")
            key, signature, body = hooks[0]
            sdk = pusher.Pusher(app_id=HOOKS_APP["id"], key=HOOKS_APP["key"], secret=HOOKS_APP["secret"])
            result = sdk.validate_webhook(key, signature, body.decode("utf-8"))
            self.assertIsNotNone(result, "pusher-http-python validate_webhook rejected the webhook: %r" % body)
            self.assertIn({"name": "channel_occupied", "channel": ch}, result["events"])
        finally:
            srv.shutdown()
            srv.server_close()


if __name__ == "__main__":
    unittest.main()
