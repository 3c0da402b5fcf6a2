#!/usr/bin/env python3
"""An operator configures interworking through a qkdni manager with ncclient.

Usage: manager_ncclient.py <testbed dir>

Against domain A's manager (NETCONF over SSH, the domain's operator login): the
manager's capabilities, get-config of its tree, an edit of the candidate and a
commit that the manager provisions to its controller (read back from the
controller with ncclient too), an invalid edit refused with an rpc-error that
changes nothing, and the change log naming the operator. Standard RFC 6241
behaviour is expected of both servers.

Every failed check is reported on stderr as "FAIL <check>: <detail>" and the
exit status is 1. The last line on stdout is one JSON object of the checks.
"""

import json
import sys
import time
from pathlib import Path

from ncclient import manager
from ncclient.operations import RPCError

NS_NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
NS_MANAGER = "urn:qkdni:yang:qkdni-manager"
NS_CONTROLLER = "urn:qkdni:yang:qkdni-controller"

if len(sys.argv) != 2:
    sys.exit(__doc__)
ENDPOINTS = json.loads((Path(sys.argv[1]) / "endpoints.json").read_text())
DOMAIN = ENDPOINTS["domains"]["A"]
LOGIN = DOMAIN["netconf_user"]

summary = {}
failures = []


def check(name, cond, detail=""):
    if cond:
        summary.setdefault(name, True)
        print(f"ok   {name}", file=sys.stderr, flush=True)
    else:
        failures.append(name)
        summary[name] = False
        print(f"FAIL {name}: {detail}", file=sys.stderr, flush=True)
    return bool(cond)


def connect(address):
    host, port = address.rsplit(":", 1)
    return manager.connect(
        host=host,
        port=int(port),
        username=LOGIN["username"],
        password=LOGIN["password"],
        hostkey_verify=False,
        look_for_keys=False,
        allow_agent=False,
        timeout=20,
    )


def peer_b(inner):
    return (
        f'<config xmlns="{NS_NC}"><manager xmlns="{NS_MANAGER}"><interworking>'
        f"<peer-domain><name>B</name>{inner}</peer-domain></interworking></manager></config>"
    )


MANAGER_TREE = ("subtree", f'<manager xmlns="{NS_MANAGER}"/>')
CONTROLLER_IW = ("subtree", f'<controller xmlns="{NS_CONTROLLER}"><interworking/></controller>')


def main():
    with connect(DOMAIN["manager"]["netconf"]) as m, connect(DOMAIN["controller"]["netconf"]) as c:
        caps = list(m.server_capabilities)
        check("manager_base11", "urn:ietf:params:netconf:base:1.1" in caps, caps)
        check(
            "manager_candidate",
            any(cap.startswith("urn:ietf:params:netconf:capability:candidate") for cap in caps),
            caps,
        )
        running = m.get_config(source="running", filter=MANAGER_TREE).data_xml
        check("manager_get_config", "<name>B</name>" in running, running)

        # an edit of the candidate, committed: the manager provisions its controller
        m.edit_config(target="candidate", config=peer_b("<qos-class>gold</qos-class>"))
        m.commit()
        running = m.get_config(source="running", filter=MANAGER_TREE).data_xml
        check("manager_committed", "<qos-class>gold</qos-class>" in running, running)
        controller = c.get_config(source="running", filter=CONTROLLER_IW).data_xml
        check(
            "controller_provisioned",
            "<qos-class>gold</qos-class>" in controller
            and f"<operator>{LOGIN['username']}</operator>" in controller,
            controller,
        )

        # out of the schema's range: an rpc-error from the manager, nothing changed
        before = m.get_config(source="running").data_xml
        bad = (
            f'<config xmlns="{NS_NC}"><manager xmlns="{NS_MANAGER}"><reports>'
            f"<mxi-report-seconds>0</mxi-report-seconds></reports></manager></config>"
        )
        try:
            m.edit_config(target="candidate", config=bad)
            m.commit()
            check("invalid_edit_refused", False, "an edit out of range was taken")
        except RPCError as e:
            check("invalid_edit_refused", e.tag in ("invalid-value", "bad-element", "operation-failed"), e.xml)
            m.discard_changes()
        after = m.get_config(source="running").data_xml
        check("invalid_edit_changes_nothing", after == before, f"{before}\n---\n{after}")

        # the change log names the operator
        changes = m.get(filter=("subtree", f'<manager xmlns="{NS_MANAGER}"><changes/></manager>')).data_xml
        check(
            "change_logged_with_user",
            f"<user>{LOGIN['username']}</user>" in changes and "<provisioned>true</provisioned>" in changes,
            changes,
        )

        # back as it was
        m.edit_config(target="candidate", config=peer_b(
            f'<qos-class xmlns:nc="{NS_NC}" nc:operation="delete">gold</qos-class>'))
        m.commit()
        controller = c.get_config(source="running", filter=CONTROLLER_IW).data_xml
        check("controller_provisioned_again", "<qos-class>gold</qos-class>" not in controller, controller)


try:
    main()
except Exception as e:  # noqa: BLE001 - any client exception is a finding
    import traceback

    check("unexpected", False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
print(json.dumps({"failed": failures, **summary}))
sys.exit(1 if failures else 0)
