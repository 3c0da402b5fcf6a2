"""Drives a qkdni testbed with the third-party ETSI GS QKD 014 client (etsi-qkd-014-client).

Usage: etsi014_client.py <testbed dir>. Prints one JSON line with what it observed.
"""

import json
import sys
from pathlib import Path
from urllib.parse import urlparse

from etsi_qkd_014_client import QKD014Client

endpoints = json.loads((Path(sys.argv[1]) / "endpoints.json").read_text())


def client(sae):
    entry = endpoints["saes"][sae]
    node = entry["node"]
    kme = next(d["nodes"][node] for d in endpoints["domains"].values() if node in d["nodes"])
    host = urlparse(kme["etsi014"]).netloc
    return QKD014Client(host, entry["cert"], entry["key"], endpoints["ca_cert"])


master, slave = "sae-a1-1", "sae-a5-1"
alice, bob = client(master), client(slave)

code, status = alice.get_status(slave)
assert code == 200, (code, status)

code, container = alice.get_key(slave, number=3, size=256)
assert code == 200, (code, container)
issued = {k.key_id: k.key for k in container.keys}

code, fetched = bob.get_key_with_key_IDs(master, list(issued))
assert code == 200, (code, fetched)
got = {k.key_id: k.key for k in fetched.keys}

second, _ = bob.get_key_with_key_IDs(master, list(issued))
code, more = alice.get_key(slave)
assert code == 200, (code, more)
wrong, _ = client("sae-a5-2").get_key_with_key_IDs(master, [k.key_id for k in more.keys])

print(json.dumps({
    "keys": len(issued),
    "same_keys": got == issued,
    "second_fetch_status": second,
    "wrong_sae_status": wrong,
}))
