"""ETSI GS QKD 014 `status` over mutual TLS from Python's standard library, with the strict
X.509 checks Python 3.13's `ssl.create_default_context()` applies by default.

Usage: strict_tls_status.py <testbed dir> <master SAE> <slave SAE>. Prints the status JSON.
"""

import http.client
import json
import ssl
import sys
from pathlib import Path
from urllib.parse import urlparse

directory, master, slave = sys.argv[1], sys.argv[2], sys.argv[3]
endpoints = json.loads((Path(directory) / "endpoints.json").read_text())
sae = endpoints["saes"][master]
kme = next(
    d["nodes"][sae["node"]]
    for d in endpoints["domains"].values()
    if sae["node"] in d["nodes"]
)
url = urlparse(kme["etsi014"])

context = ssl.create_default_context(cafile=endpoints["ca_cert"])
context.verify_flags |= ssl.VERIFY_X509_STRICT
context.load_cert_chain(sae["cert"], sae["key"])
connection = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=20)
connection.request("GET", f"/api/v1/keys/{slave}/status")
response = connection.getresponse()
body = response.read().decode()
assert response.status == 200, (response.status, body)
print(body)
