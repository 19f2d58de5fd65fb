#!/usr/bin/env python3
"""Writes keyferry's own format vectors with an implementation of DESIGN.md
that shares no code with keyferry (Python `cryptography`). Fixed salts and
file key make the bundle deterministic, so tests/bundle_format.rs can check
every part keyferry seals (commitment, wrapped key, each chunk) byte for
byte, not only that keyferry opens it.

Run: python3 make_vectors.py   (needs cryptography >= 44 for Argon2id)
"""
import base64, hashlib, hmac, json, struct
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes

CHUNK = 65536

def bundle(password, m, t, p, kdf_salt, created, expires, payload_salt, file_key, payload):
    kek = Argon2id(salt=kdf_salt, length=32, iterations=t, lanes=p, memory_cost=m).derive(password.encode())
    head = b"KFBUNDLE" + bytes([1, 1]) + struct.pack(">III", m, t, p) + kdf_salt
    head += struct.pack(">QQ", created, expires) + payload_salt
    commit = hmac.new(kek, b"keyferry bundle v1 commit" + head, hashlib.sha256).digest()
    head += commit
    wrapped = AESGCM(kek).encrypt(bytes(12), file_key, head)
    head += wrapped
    assert len(head) == 150
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=payload_salt,
               info=b"keyferry bundle v1 payload").derive(file_key)
    chunks = [payload[i:i + CHUNK] for i in range(0, len(payload), CHUNK)] or [b""]
    body = b""
    for i, c in enumerate(chunks):
        last = 1 if i == len(chunks) - 1 else 0
        nonce = i.to_bytes(11, "big") + bytes([last])
        body += AESGCM(key).encrypt(nonce, c, b"")
    return head + body

def armor(data):
    b64 = base64.b64encode(data).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN KEYFERRY BUNDLE-----\n" + "\n".join(lines) + "\n-----END KEYFERRY BUNDLE-----\n"

cases = []
for name, size in [("own-two-chunks", 70000), ("own-exact-chunk", 65536), ("own-empty", 0)]:
    payload = bytes((i * 7 + 3) % 256 for i in range(size))
    spec = {
        "file": name + ".kfb",
        "password": "own vector password",
        "kdf": [19456, 2, 1],
        "kdf_salt": bytes(range(16)).hex(),
        "created": 1764000000,
        "expires": 1764086400,
        "payload_salt": bytes(range(16, 32)).hex(),
        "file_key": bytes(range(100, 132)).hex(),
        "payload": "byte i = (7*i + 3) mod 256",
        "payload_len": size,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    data = bundle(spec["password"], 19456, 2, 1, bytes.fromhex(spec["kdf_salt"]), spec["created"],
                  spec["expires"], bytes.fromhex(spec["payload_salt"]), bytes.fromhex(spec["file_key"]), payload)
    open(spec["file"], "wb").write(data)
    open(name + ".asc", "w").write(armor(data))
    spec["sha256"] = hashlib.sha256(data).hexdigest()
    cases.append(spec)
json.dump({"comment": __doc__.strip().splitlines()[0], "vectors": cases}, open("vectors.json", "w"), indent=2)
print("wrote", len(cases), "vectors")
