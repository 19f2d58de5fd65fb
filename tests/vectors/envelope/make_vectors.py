#!/usr/bin/env python3
"""Makes vectors.json from docs/envelope.md with Python's `cryptography`
package: an implementation independent of keyferry's. Every byte string
is standard padded base64. Run from this directory: python3 make_vectors.py > vectors.json"""
import base64, json, struct
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CASES = [
    # name, key id, key, nonce, plaintext, aad
    ("empty plaintext, empty aad", 1, bytes(range(32)), bytes(12), b"", b""),
    ("password with row aad", 2, bytes([0x22] * 32), bytes(range(1, 13)),
     b"correct horse battery staple", b"app.credentials:42"),
    ("large key id, binary plaintext", 0x01020304, bytes(range(0xa0, 0xc0)),
     bytes([0xff] * 12), bytes(range(256)) * 2, b"\x00\x01"),
]

out = []
for name, key_id, key, nonce, pt, aad in CASES:
    prefix = b"\x01" + struct.pack(">I", key_id)
    ct = AESGCM(key).encrypt(nonce, pt, prefix + aad)  # ciphertext || tag
    env = prefix + nonce + ct
    b64 = lambda b: base64.b64encode(b).decode()
    out.append({
        "name": name,
        "key_id": key_id,
        "key": b64(key),
        "nonce": b64(nonce),
        "plaintext": b64(pt),
        "aad": b64(aad),
        "envelope": b64(env),
        "text": "kfe1:%d:%s" % (key_id, b64(env)),
    })
print(json.dumps(out, indent=2))
