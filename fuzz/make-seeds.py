#!/usr/bin/env python3
"""Writes the hand-picked seeds (fuzz/corpus/<target>/seed-*): valid inputs of every
kind and near-valid ones, one edit away from valid. Standard library only; rerun after a
format change (the files it writes are committed)."""
import base64, hashlib, hmac, json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(directory, "seed-" + name), "wb") as out:
        out.write(data)


# --- protobuf, by hand (field numbers from proto/fanout/v1/events.proto) ---
def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def key(field, wire):
    return varint(field << 3 | wire)


def text(field, value):
    value = value.encode() if isinstance(value, str) else value
    return key(field, 2) + varint(len(value)) + value


def number(field, value):
    return key(field, 0) + varint(value)


def message(field, body):
    return key(field, 2) + varint(len(body)) + body


def pb_value(value):  # google.protobuf.Value
    if value is None:
        return number(1, 0)
    if isinstance(value, bool):
        return number(4, int(value))
    if isinstance(value, (int, float)):
        return key(2, 1) + struct.pack("<d", float(value))
    if isinstance(value, str):
        return text(3, value)
    if isinstance(value, dict):
        return message(5, pb_struct(value))
    return message(6, b"".join(message(1, pb_value(item)) for item in value))


def pb_struct(fields):  # google.protobuf.Struct
    return b"".join(
        message(1, text(1, name) + message(2, pb_value(value))) for name, value in fields.items()
    )


def pb_event(event):
    """An event in the proto3 JSON form below, encoded as protobuf."""
    out = text(1, event.get("eventId", "")) + text(2, event.get("partner", ""))
    if "occurredAtMs" in event:
        out += number(3, int(event["occurredAtMs"]))
    if "data" in event and isinstance(event["data"], dict):
        out += message(4, pb_struct(event["data"]))
    kinds = {
        "messageCreated": (10, ["conversationId", "seq", "messageId", "sender", "recipients"]),
        "messageRead": (11, ["conversationId", "seq", "user", "messageId", "notify"]),
        "conversationRead": (12, ["conversationId", "seq", "user", "notify"]),
        "messageDeleted": (13, ["conversationId", "seq", "messageId", "recipients"]),
        "notification": (14, ["event", "recipients"]),
    }
    for kind, (field, names) in kinds.items():
        if kind not in event:
            continue
        body = b""
        for index, name in enumerate(names, 1):
            value = event[kind].get(name)
            if value is None:
                continue
            if isinstance(value, list):
                body += b"".join(text(index, item) for item in value)
            elif name == "seq":
                body += number(index, int(value))
            else:
                body += text(index, value)
        out += message(field, body)
    return out


DATA = {"text": "h\u00e9llo <b>", "n": 1.5, "big": 9007199254740991, "neg": -2,
        "tiny": 1.5e-7, "flag": True, "none": None, "list": [1, "a", {}, []],
        "nested": {"k": {"deep": [False]}}}
EVENTS = {
    "created": {"eventId": "e1", "partner": "acme", "occurredAtMs": "1700000000000",
                "data": DATA, "messageCreated": {"conversationId": "c1", "seq": "1",
                "messageId": "m1", "sender": "ann", "recipients": ["bob", "cy", "ann", "bob"]}},
    "message-read": {"eventId": "e2", "partner": "acme", "messageRead": {
        "conversationId": "c1", "seq": "1", "user": "bob", "messageId": "m1",
        "notify": ["ann", "bob"]}},
    "conversation-read": {"partner": "acme", "conversationRead": {
        "conversationId": "c1", "seq": "9007199254740992", "user": "bob", "notify": ["ann"]}},
    "deleted": {"partner": "a.c-m_e", "data": {}, "messageDeleted": {
        "conversationId": "c1", "seq": "2", "messageId": "m2", "recipients": ["bob"]}},
    "notification": {"eventId": "n1", "partner": "acme", "data": {"typing": True},
                     "notification": {"event": "typing.started", "recipients": ["bob"]}},
    # Near-valid: one check away from passing.
    "no-recipients": {"partner": "acme", "messageCreated": {
        "conversationId": "c1", "seq": "1", "sender": "ann", "recipients": ["ann"]}},
    "seq-zero": {"partner": "acme", "messageDeleted": {
        "conversationId": "c1", "seq": "0", "recipients": ["bob"]}},
    "bad-partner": {"partner": "ac/me", "notification": {"event": "x", "recipients": ["b"]}},
    "reserved-name": {"eventId": "n2", "partner": "acme",
                      "notification": {"event": "message.created", "recipients": ["bob"]}},
    "long-id": {"partner": "acme", "messageRead": {
        "conversationId": "c" * 33, "seq": "1", "user": "bob"}},
    "data-too-large": {"eventId": "n3", "partner": "acme", "data": {"t": "x" * 520},
                       "notification": {"event": "big", "recipients": ["bob"]}},
    "too-many": {"partner": "acme", "messageDeleted": {"conversationId": "c1", "seq": "3",
                 "recipients": ["u%d" % n for n in range(9)]}},
    "unknown-event": {"eventId": "e9", "partner": "acme"},
}

for name, event in EVENTS.items():
    write("ingest_protobuf", name, pb_event(event))
    write("ingest_json", name, json.dumps(event))
    write("api_request", name, json.dumps(event))
write("ingest_protobuf", "nan-data", text(2, "acme") + message(4, message(1, text(1, "n")
      + message(2, key(2, 1) + struct.pack("<d", float("nan"))))) + message(14, text(1, "t") + text(2, "b")))
write("ingest_protobuf", "unknown-field", pb_event(EVENTS["created"]) + number(99, 7))
write("ingest_protobuf", "truncated", pb_event(EVENTS["created"])[:-5])
write("ingest_protobuf", "invalid-utf8", text(2, b"\xff\xfe") + message(14, text(1, "t")))
write("ingest_json", "data-not-object", '{"eventId":"n1","partner":"acme","data":[1],'
      '"notification":{"event":"typing","recipients":["bob"]}}')
write("ingest_json", "data-big-integer", '{"eventId":"n1","partner":"acme","data":'
      '{"id":9007199254740993},"notification":{"event":"typing","recipients":["bob"]}}')
write("ingest_json", "data-exponents", '{"eventId":"n1","partner":"acme","data":{"a":1e308,'
      '"b":-0.0,"c":5e-324,"d":1.0,"e":"\\ud83d\\ude00"},"notification":{"event":"t","recipients":["b"]}}')
write("ingest_json", "numbers-as-numbers", '{"partner":"acme","occurredAtMs":5,'
      '"messageCreated":{"conversationId":"c1","seq":1,"sender":"a","recipients":["b"]}}')
write("ingest_json", "snake-case", '{"event_id":"e1","partner":"acme","message_created":'
      '{"conversation_id":"c1","seq":"1","sender":"a","recipients":["b"]}}')
write("ingest_json", "two-kinds", '{"partner":"acme","notification":{"event":"t","recipients":'
      '["b"]},"messageDeleted":{"conversationId":"c","seq":"1","recipients":["b"]}}')
write("ingest_json", "not-json", '{"partner":"acme",')

# --- api request bodies (and the same bytes as header value and seq) ---
created = json.dumps(EVENTS["created"])
write("api_request", "batch", "[%s, %s]" % (created, json.dumps(EVENTS["notification"])))
write("api_request", "batch-too-large", "[" + ",".join([created] * 9) + "]")
write("api_request", "empty-batch", " [ ] ")
write("api_request", "other-partner", created.replace('"acme"', '"globex"'))
write("api_request", "bad-first-byte", '"text"')
write("api_request", "bearer", "Bearer fuzz-api-key-0123456789abcdef ")
write("api_request", "seq", "0009007199254740992")

# --- /realtime client frames ---
frames = {
    "auth": '{"type":"authrequest","token":"eyJ.x.y","partner":"acme","id":1}',
    "auth-id-string": '{"id":"a\\u0022b","type":"authrequest","token":"t","partner":"p"}',
    "count": '{"type":"get_unread_count","id":-1.5e3}',
    "ping": ' {"type" : "ping", "id" : 18446744073709551616, "x": [1, {"y": null}]} ',
    "subscribe": '{"type":"subscribe_events"}',
    "subscribe-since": '{"type":"subscribe_events","since":{"epoch":"17-0000abCD","offset":4},"id":"s"}',
    "since-null": '{"type":"subscribe_events","since":null}',
    "since-bad-epoch": '{"type":"subscribe_events","since":{"epoch":"17-1","offset":4}}',
    "duplicate-id": '{"type":"ping","id":1,"id":2}',
    "duplicate-type": '{"type":"ping","type":"ping","id":3}',
    "missing-token": '{"type":"authrequest","partner":"acme","token":null,"id":"x"}',
    "invalid-id": '{"type":"ping","id":{"a":1}}',
    "unknown-type": '{"type":"subscribe","id":7}',
    "not-object": '["type","ping"]',
    "big-number-id": '{"type":"ping","id":1e999}',
    "not-utf8": b'{"type":"ping","x":"\xff"}',
}
for name, frame in frames.items():
    write("realtime_decode", name, frame)

# --- ActionCable commands (beside the seeds already there) ---
commands = {
    "history": '{"command":"history","identifier":"{\\"channel\\":\\"RoomChannel\\"}",'
               '"history":{"since":1700000000,"streams":{"events-0000abcd":{"epoch":"5-0000abcd","offset":3}}}}',
    "subscribe-history": '{"command":"subscribe","identifier":"{\\"channel\\":\\"RoomChannel\\",'
                         '\\"pubsub_token\\":\\"t\\"}","history":{"since":5}}',
    "pong": '{"command":"pong"}',
    "bad-history": '{"command":"history","identifier":"x","history":[1]}',
    "unknown-command": '{"command":"perform","identifier":"x"}',
}
for name, command in commands.items():
    write("cable_decode", name, command)

# --- tokens: form byte 0 = a token as sent; 1 = HEADER\nCLAIMS, signed by the target;
# 3 = the same, times relative to now (see fanout_edge::fuzzing::jwt) ---
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def token(header, claims, secret):
    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return signing_input + b"." + b64(signature)


claims = {"uniqueId": "u1", "jti": "j1", "iat": 1700000000, "exp": 1700003600, "partner": "acme"}
write("jwt", "acme-k1", b"\0" + token({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims,
                                      "fuzz-acme-k1-0123456789"))
write("jwt", "globex", b"\0" + token({"alg": "HS256"}, dict(claims, partner="globex"),
                                     "fuzz-globex-0123456789"))
write("jwt", "alg-none", b"\0" + b64(b'{"alg":"none"}') + b"." + b64(json.dumps(claims).encode()) + b".")
write("jwt", "unknown-kid", b"\0" + token({"alg": "HS256", "kid": "k9"}, claims, "x"))
write("jwt", "three-dots", b"\0a.b.c.d")
header = b'{"alg":"HS256","typ":"JWT","kid":"k1"}'
write("jwt", "signed", b"\1" + header + b"\n" + json.dumps(claims).encode())
write("jwt", "signed-stream", b"\1" + b'{"alg":"HS256"}' + b"\n" + json.dumps(dict(claims, scope="stream")).encode())
relative = {"uniqueId": "u1", "jti": "j1", "iat": 0, "exp": 60, "nbf": -5, "partner": "acme"}
write("jwt", "relative", b"\3" + header + b"\n" + json.dumps(relative).encode())
write("jwt", "relative-stream", b"\3" + b'{"alg":"HS256","kid":"k1"}' + b"\n"
      + json.dumps(dict(relative, scope="stream")).encode())
write("jwt", "relative-bad-claims", b"\3" + header + b"\n"
      + json.dumps(dict(relative, uniqueId=7, jti="")).encode())
write("jwt", "relative-too-long", b"\3" + header + b"\n" + json.dumps(dict(relative, exp=90000)).encode())
write("jwt", "relative-future", b"\3" + header + b"\n" + json.dumps(dict(relative, iat=600)).encode())

# --- ActionCable encoders: 8 bytes of count (little-endian), then the identifier ---
# Offers of the server's other subprotocols: the target before this one asserted that
# only actioncable-v1-json could be picked, false since the extended protocol.
write("cable_encode", "ext-subprotocol", struct.pack("<Q", 3) + b"actioncable-v1-ext-json\nx")
write("cable_encode", "unsupported-subprotocol", struct.pack("<Q", 0) + b" actioncable-unsupported , a")
