#!/usr/bin/env python3
"""Writes format 2 (distribution) vectors with an implementation of
docs/format.md ("Format 2") that shares no code with keyferry (Python
`cryptography`). Every secret input is fixed, and X25519 and Ed25519 are
deterministic, so src/bundle/v2.rs checks that keyferry seals the same bytes
and opens them, and src/bundle/keys.rs that it computes the same codes.

Run: python3 make_vectors.py   (needs cryptography >= 40)
"""
import hashlib, hmac, json, struct
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

CHUNK = 65536
ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

def hkdf(ikm, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)

def x_public(seed):
    return X25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()

def code(prefix, label, public):
    n = int.from_bytes(hashlib.sha256(label + b"\0" + public).digest(), "big")
    chars = "".join(ALPHABET[(n >> (256 - 5 * (i + 1))) & 31] for i in range(20))
    return prefix + "-".join(chars[i:i + 4] for i in range(0, 20, 4))

def distribution(signer_seed, recipient_seeds, ephemeral_seeds, created, expires, serial,
                 payload_salt, file_key, payload):
    signer = Ed25519PrivateKey.from_private_bytes(signer_seed)
    fixed = b"KFBUNDLE" + bytes([2, 1]) + struct.pack(">H", len(recipient_seeds))
    fixed += struct.pack(">QQQ", created, expires, serial)
    fixed += signer.public_key().public_bytes_raw() + payload_salt
    assert len(fixed) == 84
    head = fixed
    for r_seed, e_seed in zip(recipient_seeds, ephemeral_seeds):
        r_pub = x_public(r_seed)
        eph = X25519PrivateKey.from_private_bytes(e_seed)
        e_pub = eph.public_key().public_bytes_raw()
        shared = eph.exchange(X25519PrivateKey.from_private_bytes(r_seed).public_key())
        wrap = hkdf(shared, e_pub + r_pub, b"keyferry bundle v2 x25519")
        head += r_pub + e_pub + AESGCM(wrap).encrypt(bytes(12), file_key, fixed)
    head += hmac.new(file_key, b"keyferry bundle v2 commit" + head, hashlib.sha256).digest()
    key = hkdf(file_key, payload_salt, b"keyferry bundle v2 payload")
    chunks = [payload[i:i + CHUNK] for i in range(0, len(payload), CHUNK)] or [b""]
    body = b""
    for i, c in enumerate(chunks):
        nonce = i.to_bytes(11, "big") + bytes([1 if i == len(chunks) - 1 else 0])
        body += AESGCM(key).encrypt(nonce, c, b"")
    signed = head + body
    return signed + signer.sign(b"keyferry bundle v2 signature" + signed)

cases = []
for name, recipients, size, expires in [("v2-one", 1, 1000, 0), ("v2-two-chunks", 2, 70000, 1764086400)]:
    payload = bytes((i * 11 + 5) % 256 for i in range(size))
    spec = {
        "file": name + ".kfd",
        "signer_seed": bytes([1] * 32).hex(),
        "recipient_seeds": [bytes([2 + i] * 32).hex() for i in range(recipients)],
        "ephemeral_seeds": [bytes(range(40 + 32 * i, 72 + 32 * i)).hex() for i in range(recipients)],
        "created": 1764000000,
        "expires": expires,
        "serial": 42,
        "payload_salt": bytes(range(16, 32)).hex(),
        "file_key": bytes(range(100, 132)).hex(),
        "payload": "byte i = (11*i + 5) mod 256",
        "payload_len": size,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    data = distribution(bytes.fromhex(spec["signer_seed"]),
                        [bytes.fromhex(s) for s in spec["recipient_seeds"]],
                        [bytes.fromhex(s) for s in spec["ephemeral_seeds"]],
                        spec["created"], expires, spec["serial"],
                        bytes.fromhex(spec["payload_salt"]), bytes.fromhex(spec["file_key"]), payload)
    open(spec["file"], "wb").write(data)
    spec["sha256"] = hashlib.sha256(data).hexdigest()
    cases.append(spec)

signer_public = Ed25519PrivateKey.from_private_bytes(bytes([1] * 32)).public_key().public_bytes_raw()
codes = {
    "host_key_seed_02": code("kfh1:", b"keyferry host key v1", x_public(bytes([2] * 32))),
    "host_key_seed_03": code("kfh1:", b"keyferry host key v1", x_public(bytes([3] * 32))),
    "signing_key_seed_01": code("kfs1:", b"keyferry signing key v1", signer_public),
}
json.dump({"distributions": cases, "codes": codes}, open("vectors.json", "w"), indent=2)
open("vectors.json", "a").write("\n")
