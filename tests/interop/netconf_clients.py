#!/usr/bin/env python3
"""Drives a qkdni testbed's NETCONF servers with third-party clients.

Usage: netconf_clients.py <testbed dir> <qkdni binary>

Clients: ncclient (Python API) and the netconf-console2 CLI (looked up next to
this interpreter, i.e. in the venv's bin dir, then on PATH). Every check is
against node a1 (notifications also on a2). The script expects standard
RFC 6241 / 6022 / 5277 behaviour: a check fails when the server deviates, even
if a lenient client could work around it.

Every failed check is reported on stderr as "FAIL <check>: <detail>" (with the
offending rpc and rpc-reply where there is one) and the exit status is 1. The
last line on stdout is always one JSON object summarising the checks.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

from lxml import etree
from ncclient import manager
from ncclient.operations import RPCError
from ncclient.transport.session import NetconfBase

NS_NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
NS_NODE = "urn:etsi:qkd:yang:etsi-qkd-node"
NS_KM = "urn:qkdni:yang:qkdni-km"
NS_MON = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
NS_NOTIF = "urn:ietf:params:xml:ns:netconf:notification:1.0"
BASE11 = "urn:ietf:params:netconf:base:1.1"
NSMAP = {"nc": NS_NC, "n": NS_NODE, "km": NS_KM, "mon": NS_MON, "notif": NS_NOTIF}

# ETSI GS QKD 015 identifiers are UUIDs: qkdni derives them as UUIDv5 of its names in its
# own namespace (src/etsi015.rs, yang/qkdni-etsi-ids.yang); computed here independently.
QKDNI_UUID_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:qkdni:etsi-qkd-015")


def link_uuid(link, domain="A"):
    return str(uuid.uuid5(QKDNI_UUID_NS, f"link/{domain}/{domain}/{link}"))


A1_A2 = link_uuid("a1-a2")

# Relay-route destinations created by this script; removed again at the end.
TEST_DESTS = ["z7", "z8", "z9", "z10", "z11", "z12", "z13", "z14", "z15", "z16"]

if len(sys.argv) != 3:
    sys.exit(__doc__)
TESTBED = Path(sys.argv[1])
QKDNI = sys.argv[2]
ENDPOINTS = json.loads((TESTBED / "endpoints.json").read_text())
NODES = ENDPOINTS["domains"]["A"]["nodes"]
ADMIN = ENDPOINTS["netconf_user"]
READONLY = ENDPOINTS["netconf_readonly_user"]

summary = {}
failures = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def fail(name, detail):
    failures.append(name)
    summary[name] = False
    log(f"FAIL {name}: {detail}")


def check(name, cond, detail=""):
    """Record a boolean check; `detail` is printed only on failure."""
    if cond:
        summary.setdefault(name, True)
        log(f"ok   {name}")
    else:
        fail(name, detail() if callable(detail) else detail)
    return bool(cond)


def section(name):
    """Decorator: run a group of checks, turning an unexpected exception into a failure."""

    def wrap(fn):
        def run(*a, **kw):
            log(f"--- {name}")
            try:
                return fn(*a, **kw)
            except RPCError as e:
                fail(name, f"unexpected rpc-error: {e.xml if isinstance(e.xml, str) else etree.tostring(e.xml).decode()}")
            except Exception as e:  # noqa: BLE001 - any client exception is a finding
                fail(name, f"unexpected {type(e).__name__}: {e}\n{traceback.format_exc()}")

        return run

    return wrap


def hostport(node):
    host, port = NODES[node]["netconf"].rsplit(":", 1)
    return host, int(port)


def connect(node="a1", user=ADMIN):
    host, port = hostport(node)
    return manager.connect(
        host=host,
        port=port,
        username=user["username"],
        password=user["password"],
        hostkey_verify=False,
        look_for_keys=False,
        allow_agent=False,
        timeout=20,
    )


def xml_of(x):
    if isinstance(x, str):
        return x
    return etree.tostring(x).decode()


def rpc_error_xml(e):
    return xml_of(e.xml) if e.xml is not None else str(e)


def route_config(dest, next_hop, operation=None):
    op = f' xmlns:nc="{NS_NC}" nc:operation="{operation}"' if operation else ""
    hop = f"<next-hop>{next_hop}</next-hop>" if next_hop else ""
    return (
        f'<config xmlns="{NS_NC}"><qkd_node xmlns="{NS_NODE}"><key-manager xmlns="{NS_KM}">'
        f"<relay-routes><route{op}><destination>{dest}</destination>{hop}</route>"
        f"</relay-routes></key-manager></qkd_node></config>"
    )


ROUTES_FILTER = f'<qkd_node xmlns="{NS_NODE}"><key-manager xmlns="{NS_KM}"><relay-routes/></key-manager></qkd_node>'


def routes(m, source="running"):
    reply = m.get_config(source, filter=("subtree", ROUTES_FILTER))
    return {
        r.findtext("km:destination", namespaces=NSMAP): r.findtext("km:next-hop", namespaces=NSMAP)
        for r in reply.data_ele.iterfind(".//km:route", NSMAP)
    }


def expect_rpc_error(name, fn, tags, request_desc):
    """Call fn(); it must raise RPCError with an error-tag in `tags`. Returns the RPCError or None."""
    try:
        reply = fn()
    except RPCError as e:
        log(f"     {name}: error-tag={e.tag} app-tag={e.app_tag} message={e.message!r}")
        check(
            name,
            e.tag in tags,
            lambda: f"expected error-tag {tags}, got {e.tag!r}\n  rpc: {request_desc}\n  rpc-error: {rpc_error_xml(e)}",
        )
        return e
    fail(name, f"expected rpc-error with tag {tags}, got success\n  rpc: {request_desc}\n  reply: {getattr(reply, 'xml', reply)}")
    return None


def netconf_console_bin():
    cand = Path(sys.executable).parent / "netconf-console2"
    if cand.exists():
        return str(cand)
    found = shutil.which("netconf-console2")
    if not found:
        sys.exit("netconf-console2 not found next to the interpreter or on PATH (pip install -r requirements.txt)")
    return found


def qkdni(*args):
    cmd = [QKDNI, "testbed", *args, "--dir", str(TESTBED)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {p.returncode}: {p.stderr.strip()}")
    return p.stdout


# ----------------------------------------------------------------------------
# 1. connect / hello
# ----------------------------------------------------------------------------
@section("ncclient_connect")
def check_connect(m):
    caps = list(m.server_capabilities)
    check("ncclient_server_advertises_base11", BASE11 in caps, f"server capabilities: {caps}")
    # ncclient switches to chunked framing (RFC 6242 §4.2) iff both hellos carry base:1.1.
    check("ncclient_base11", m._session._base == NetconfBase.BASE_11, f"ncclient session base is {m._session._base}")
    check("session_id", bool(m.session_id), f"no session-id in server hello: {m.session_id!r}")
    m.get_config("running")  # one round trip with chunked framing
    summary["ncclient_roundtrip"] = True
    # Several RPCs in flight at once (RFC 6241 §4.1 allows pipelining).
    m.async_mode = True
    try:
        pending = [m.get_config("running", filter=("subtree", ROUTES_FILTER)) for _ in range(5)]
        for rpc in pending:
            rpc.event.wait(10)
        check("pipelined_rpcs", all(r.event.is_set() and r.reply is not None and r.reply.ok for r in pending), "pipelined get-config replies missing or not ok")
    finally:
        m.async_mode = False


# ----------------------------------------------------------------------------
# 2. get-schema for every schema in /netconf-state/schemas + yanglint
# ----------------------------------------------------------------------------
@section("schemas")
def check_schemas(m, workdir):
    reply = m.get(filter=("subtree", f'<netconf-state xmlns="{NS_MON}"><schemas/></netconf-state>'))
    schemas = []
    for s in reply.data_ele.iterfind(".//mon:schemas/mon:schema", NSMAP):
        schemas.append(
            (
                s.findtext("mon:identifier", namespaces=NSMAP),
                s.findtext("mon:version", namespaces=NSMAP) or "",
                s.findtext("mon:format", namespaces=NSMAP),
                s.findtext("mon:namespace", namespaces=NSMAP),
            )
        )
    summary["schemas_listed"] = len(schemas)
    check("schemas_listed", len(schemas) > 0, f"empty schema list: {reply.xml}")
    listed = {s[0] for s in schemas}
    for ours in ("etsi-qkd-node-types", "etsi-qkd-sdn-node", "qkdni-etsi-ids", "qkdni-km"):
        check(f"schema_listed_{ours}", ours in listed, f"{ours} missing from /netconf-state/schemas: {sorted(listed)}")

    # RFC 6022 §2.1.3: the schema list holds the schemas the server supports; a
    # module announced in <hello> must be retrievable with <get-schema>.
    advertised = {}
    for cap in m.server_capabilities:
        if "?module=" in cap:
            q = cap.split("?", 1)[1]
            params = dict(p.split("=", 1) for p in q.split("&") if "=" in p)
            advertised[params["module"]] = params.get("revision", "")
    missing = sorted(f"{mod}@{rev}" for mod, rev in advertised.items() if mod not in listed)
    check(
        "advertised_modules_in_schemas",
        not missing,
        f"modules advertised in <hello> but absent from /netconf-state/schemas: {missing}",
    )
    for mod in missing:
        name = mod.split("@")[0]
        try:
            m.get_schema(name, advertised[name], "yang")
            log(f"     note: get-schema {mod} works although it is not listed")
        except RPCError as e:
            fail(
                f"get_schema_advertised_{name}",
                f"module {mod} is advertised in <hello> but get-schema fails\n"
                f'  rpc: <get-schema xmlns="{NS_MON}"><identifier>{name}</identifier>'
                f"<version>{advertised[name]}</version><format>yang</format></get-schema>\n"
                f"  rpc-error: {rpc_error_xml(e)}",
            )

    fetched = 0
    for ident, version, fmt, ns in schemas:
        if fmt not in ("yang", "ietf-netconf-monitoring:yang", None):
            log(f"     note: {ident} listed with format {fmt}; fetching as yang anyway")
        try:
            r = m.get_schema(ident, version or None, "yang")
        except RPCError as e:
            fail(f"get_schema_{ident}", f"get-schema {ident}@{version} failed: {rpc_error_xml(e)}")
            continue
        text = r.data
        if not check(
            f"get_schema_{ident}_content",
            text and (f"module {ident}" in text or f"submodule {ident}" in text) and (not version or version in text),
            lambda: f"get-schema {ident}@{version} returned something else: {str(text)[:300]!r}",
        ):
            continue
        (workdir / f"{ident}@{version}.yang" if version else workdir / f"{ident}.yang").write_text(text)
        fetched += 1
    summary["schemas_fetched"] = fetched
    check("schemas_fetched_all", fetched == len(schemas), f"fetched {fetched} of {len(schemas)}")

    # The repository's modules must be what the server serves.
    repo_yang = Path(__file__).resolve().parents[2] / "yang"
    for ours in ("etsi-qkd-node-types", "etsi-qkd-sdn-node", "qkdni-etsi-ids", "qkdni-km"):
        got = glob.glob(str(workdir / f"{ours}@*.yang"))
        src = repo_yang / f"{ours}.yang"
        if got and src.exists():
            check(
                f"schema_matches_repo_{ours}",
                Path(got[0]).read_text().strip() == src.read_text().strip(),
                f"get-schema {ours} differs from {src}",
            )

    # yanglint: all together, then every file on its own (catches a module
    # that only validates because a sibling happened to be loaded).
    files = sorted(glob.glob(str(workdir / "*.yang")))
    p = subprocess.run(["yanglint", "-p", str(workdir), *files], capture_output=True, text=True, timeout=120)
    if p.stderr.strip():
        log(f"     yanglint (all) said: {p.stderr.strip()}")
    check("yanglint_all", p.returncode == 0, f"yanglint -p {workdir} *.yang -> {p.returncode}: {p.stderr.strip()}")
    valid = 0
    for f in files:
        ident = Path(f).name.split("@")[0].removesuffix(".yang")
        p = subprocess.run(["yanglint", "-p", str(workdir), f], capture_output=True, text=True, timeout=60)
        ours = ident in ("etsi-qkd-node-types", "etsi-qkd-sdn-node", "qkdni-etsi-ids", "qkdni-km")
        if p.returncode != 0 and ours:
            # RFC 7950 §9.10.2: an identityref value (here a default) must come
            # from an implemented module. Loaded alone, yanglint imports
            # etsi-qkd-node-types as not implemented; the server advertises it
            # as implemented, so retry with imports implemented (-i).
            log(f"     note: yanglint {Path(f).name} alone: {p.stderr.strip()}")
            p = subprocess.run(["yanglint", "-i", "-p", str(workdir), f], capture_output=True, text=True, timeout=60)
            if p.returncode == 0:
                log(f"     note: yanglint -i {Path(f).name} (imports implemented, as the server advertises): ok")
        if p.returncode == 0:
            valid += 1
        elif ours:
            fail(f"yanglint_{ident}", p.stderr.strip())
        else:
            # libyang-internal modules (yang, ietf-yang-metadata, ...) are built
            # into yanglint's context; a clash there is not our server's fault.
            log(f"     note: yanglint rejects libyang-internal module {ident}: {p.stderr.strip()}")
    summary["schemas_valid"] = valid

    # RFC 7950 §5.6.4: a NETCONF server implementing YANG 1.1 modules MUST
    # implement ietf-yang-library, list its modules there and announce the
    # yang-library capability (RFC 8526 §2: yang-library:1.1 for the 2019 revision).
    yang11 = sorted(
        Path(f).name for f in files if "yang-version 1.1;" in Path(f).read_text() and Path(f).name.split("@")[0] in ("etsi-qkd-node-types", "etsi-qkd-sdn-node", "qkdni-etsi-ids", "qkdni-km")
    )
    if yang11:
        caps = [c for c in m.server_capabilities if c.startswith("urn:ietf:params:netconf:capability:yang-library:")]
        check(
            "yang_library_capability",
            bool(caps),
            f"server implements YANG 1.1 modules {yang11} but <hello> has no urn:ietf:params:netconf:capability:yang-library:1.0/1.1 capability (RFC 7950 §5.6.4 / RFC 8526 §2)",
        )
        yl = "urn:ietf:params:xml:ns:yang:ietf-yang-library"
        replies = []
        found = False
        for flt in (f'<yang-library xmlns="{yl}"/>', f'<modules-state xmlns="{yl}"/>'):
            r = m.get(filter=("subtree", flt))
            replies.append(f"  rpc: <get><filter type=\"subtree\">{flt}</filter></get>\n  reply: {r.xml}")
            names = {e.text for e in r.data_ele.iter(f"{{{yl}}}name")}
            found = found or "qkdni-km" in names
        check(
            "yang_library_data",
            found,
            "ietf-yang-library is advertised but neither /yang-library nor /modules-state lists qkdni-km:\n" + "\n".join(replies),
        )


# ----------------------------------------------------------------------------
# 3. filters
# ----------------------------------------------------------------------------
@section("filters")
def check_filters(m):
    # Subtree: one link's key-pool (state) -> only qkdl_id + key-pool.
    flt = (
        f'<qkd_node xmlns="{NS_NODE}"><qkd_links><qkd_link><qkdl_id>{A1_A2}</qkdl_id>'
        f'<key-pool xmlns="{NS_KM}"/></qkd_link></qkd_links></qkd_node>'
    )
    r = m.get(filter=("subtree", flt))
    d = r.data_ele
    links = d.findall("n:qkd_node/n:qkd_links/n:qkd_link", NSMAP)
    pool = d.find("n:qkd_node/n:qkd_links/n:qkd_link/km:key-pool", NSMAP)
    check(
        "subtree_keypool",
        len(links) == 1
        and links[0].findtext("n:qkdl_id", namespaces=NSMAP) == A1_A2
        and pool is not None
        and pool.findtext("km:own-blocks", namespaces=NSMAP) is not None
        and pool.findtext("km:fill-percent", namespaces=NSMAP) is not None,
        f"filter {flt}\n  reply: {r.xml}",
    )
    extra = [
        etree.QName(e).localname
        for e in (links[0] if links else [])
        if etree.QName(e).localname not in ("qkdl_id", "key-pool")
    ] + [etree.QName(e).localname for e in d.findall("n:qkd_node/*", NSMAP) if etree.QName(e).localname != "qkd_links"]
    check("subtree_keypool_selective", not extra, f"subtree filter returned unselected nodes {extra}\n  reply: {r.xml}")
    summary["keypool_own_blocks"] = int(pool.findtext("km:own-blocks", namespaces=NSMAP)) if pool is not None else None

    # Subtree on get-config: relay routes only, no state, no siblings.
    r = m.get_config("running", filter=("subtree", ROUTES_FILTER))
    km = r.data_ele.find("n:qkd_node/km:key-manager", NSMAP)
    rts = r.data_ele.findall(".//km:route", NSMAP)
    check("subtree_routes", km is not None and len(rts) >= 3, f"filter {ROUTES_FILTER}\n  reply: {r.xml}")
    extra = [etree.QName(e).localname for e in (km if km is not None else []) if etree.QName(e).localname != "relay-routes"]
    check("subtree_routes_selective", not extra, f"unselected siblings {extra} in reply: {r.xml}")

    # Content-match node: one route.
    flt = (
        f'<qkd_node xmlns="{NS_NODE}"><key-manager xmlns="{NS_KM}"><relay-routes><route>'
        f"<destination>a5</destination></route></relay-routes></key-manager></qkd_node>"
    )
    r = m.get_config("running", filter=("subtree", flt))
    rts = r.data_ele.findall(".//km:route", NSMAP)
    check(
        "subtree_content_match",
        len(rts) == 1 and rts[0].findtext("km:next-hop", namespaces=NSMAP) == "a2",
        f"filter {flt}\n  reply: {r.xml}",
    )

    # get-config must not return state (config false) nodes.
    r = m.get_config("running")
    state = r.data_ele.findall(".//km:oper-state", NSMAP) + r.data_ele.findall(".//km:key-pool", NSMAP)
    check("get_config_no_state", not state, f"get-config returned state nodes: {r.xml[:2000]}")

    # XPath (:xpath capability) with prefixes bound on <filter>.
    ns = {"n": NS_NODE, "km": NS_KM}
    xp = f"/n:qkd_node/n:qkd_links/n:qkd_link[n:qkdl_id='{A1_A2}']/km:oper-state"
    r = m.get(filter=("xpath", (ns, xp)))
    st = r.data_ele.findall(".//km:oper-state", NSMAP)
    check("xpath_oper_state", len(st) == 1 and st[0].text == "up", f"xpath {xp}\n  reply: {r.xml}")
    check(
        "xpath_selective",
        not r.data_ele.findall(".//km:key-pool", NSMAP) and not r.data_ele.findall(".//km:key-manager", NSMAP),
        f"xpath {xp} returned unselected nodes: {r.xml}",
    )
    xp = "/n:qkd_node/km:key-manager/km:relay-routes/km:route[km:destination='a5']"
    r = m.get_config("running", filter=("xpath", (ns, xp)))
    rts = r.data_ele.findall(".//km:route", NSMAP)
    check("xpath_get_config_route", len(rts) == 1 and rts[0].findtext("km:next-hop", namespaces=NSMAP) == "a2", f"xpath {xp}\n  reply: {r.xml}")
    summary["filters"] = True


# ----------------------------------------------------------------------------
# 4. edit-config on running
# ----------------------------------------------------------------------------
@section("edit_config")
def check_edit_config(m):
    before = routes(m)
    m.edit_config(target="running", config=route_config("z7", "a2"))
    after = routes(m)
    check("edit_config_valid", after.get("z7") == "a2", f"route z7 not in running after edit: {after}")

    cfg = route_config("z8", "a5")
    e = expect_rpc_error(
        "edit_config_invalid_rejected",
        lambda: m.edit_config(target="running", config=cfg),
        ("operation-failed", "invalid-value", "data-missing", "bad-element"),
        f"edit-config running {cfg}",
    )
    if e is not None and e.app_tag == "must-violation":
        # RFC 7950 §15.4: a violated "must" is reported with error-tag operation-failed.
        check(
            "edit_config_must_violation_tag",
            e.tag == "operation-failed",
            f"must violation reported with error-tag {e.tag!r}, RFC 7950 §15.4 requires operation-failed\n  rpc: <edit-config><target><running/></target>{cfg}</edit-config>\n  rpc-error: {rpc_error_xml(e)}",
        )
    if e is not None:
        log(f"     invalid next-hop rejected with tag={e.tag} app-tag={e.app_tag} path={e.path} message={e.message!r}")
        summary["edit_config_invalid_error_tag"] = e.tag
    now = routes(m)
    check("edit_config_invalid_running_unchanged", now == after, f"running changed by a rejected edit: {after} -> {now}")

    # test-option test-only (:validate:1.1) must not touch running.
    m.edit_config(target="running", config=route_config("z14", "a2"), test_option="test-only")
    now = routes(m)
    check("edit_config_test_only", "z14" not in now, f"test-only edit changed running: {now}")

    # create on an existing entry -> data-exists (RFC 6241 §7.2).
    cfg = route_config("z7", "a2", operation="create")
    expect_rpc_error("edit_config_create_exists", lambda: m.edit_config(target="running", config=cfg), ("data-exists",), f"edit-config running {cfg}")
    # delete a missing entry -> data-missing.
    cfg = route_config("z15", None, operation="delete")
    expect_rpc_error("edit_config_delete_missing", lambda: m.edit_config(target="running", config=cfg), ("data-missing",), f"edit-config running {cfg}")
    # remove a missing entry -> ok.
    m.edit_config(target="running", config=route_config("z15", None, operation="remove"))
    # unknown element -> unknown-element (RFC 6241 App. A).
    cfg = f'<config xmlns="{NS_NC}"><qkd_node xmlns="{NS_NODE}"><key-manager xmlns="{NS_KM}"><bogus>1</bogus></key-manager></qkd_node></config>'
    expect_rpc_error("edit_config_unknown_element", lambda: m.edit_config(target="running", config=cfg), ("unknown-element",), f"edit-config running {cfg}")
    # delete z7 again.
    m.edit_config(target="running", config=route_config("z7", None, operation="delete"))
    now = routes(m)
    check("edit_config_delete", now == before, f"after deleting z7 expected {before}, got {now}")


# ----------------------------------------------------------------------------
# 5. candidate / commit / confirmed-commit
# ----------------------------------------------------------------------------
@section("candidate")
def check_candidate(m):
    base = routes(m)
    m.edit_config(target="candidate", config=route_config("z8", "a2"))
    check("candidate_edit", routes(m, "candidate").get("z8") == "a2", "z8 not in candidate after edit")
    check("candidate_not_running", "z8" not in routes(m), "candidate edit leaked into running before commit")
    m.validate(source="candidate")
    m.discard_changes()
    check("discard_changes", "z8" not in routes(m, "candidate"), f"z8 still in candidate after discard-changes: {routes(m, 'candidate')}")

    m.edit_config(target="candidate", config=route_config("z9", "a2"))
    m.commit()
    check("commit", routes(m).get("z9") == "a2", f"z9 not in running after commit: {routes(m)}")

    m.edit_config(target="candidate", config=route_config("z10", "a2"))
    m.commit(confirmed=True, timeout="2")
    check("confirmed_commit_applied", routes(m).get("z10") == "a2", f"z10 not in running right after confirmed commit: {routes(m)}")
    time.sleep(3.5)
    now = routes(m)
    check("confirmed_commit_rolled_back", "z10" not in now and now.get("z9") == "a2", f"after confirm-timeout running is {now}")
    cand = routes(m, "candidate")
    check("confirmed_commit_candidate_reset", "z10" not in cand, f"candidate still holds z10 after rollback: {cand}")

    # confirming commit keeps the change.
    m.edit_config(target="candidate", config=route_config("z12", "a2"))
    m.commit(confirmed=True, timeout="2")
    m.commit()
    time.sleep(2.5)
    check("confirming_commit_persists", routes(m).get("z12") == "a2", f"z12 lost after confirming commit: {routes(m)}")

    # cancel-commit (:confirmed-commit:1.1) reverts immediately.
    m.edit_config(target="candidate", config=route_config("z11", "a2"))
    m.commit(confirmed=True, timeout="60")
    check("confirmed_commit_long_applied", routes(m).get("z11") == "a2", "z11 not applied")
    m.cancel_commit()
    check("cancel_commit", "z11" not in routes(m), f"z11 still in running after cancel-commit: {routes(m)}")

    # A confirmed commit without <persist> is rolled back when its session ends.
    s2 = connect()
    s2.edit_config(target="candidate", config=route_config("z16", "a2"))
    s2.commit(confirmed=True, timeout="60")
    check("confirmed_commit_other_session_applied", routes(m).get("z16") == "a2", "z16 not applied")
    s2.close_session()
    time.sleep(0.5)
    check("confirmed_commit_rolled_back_on_session_close", "z16" not in routes(m), f"z16 survived the close of the confirming session: {routes(m)}")

    for dest in ("z9", "z12"):
        m.edit_config(target="candidate", config=route_config(dest, None, operation="remove"))
    m.commit()
    check("candidate_cleanup", routes(m) == base, f"running {routes(m)} != {base}")


# ----------------------------------------------------------------------------
# 6. locks
# ----------------------------------------------------------------------------
@section("locks")
def check_locks(m):
    s2 = connect()
    try:
        m.lock("running")
        e = expect_rpc_error("lock_denied", lambda: s2.lock("running"), ("lock-denied",), "<lock><target><running/></target></lock>")
        if e is not None:
            holder = etree.fromstring(e.xml.encode() if isinstance(e.xml, str) else etree.tostring(e.xml)).findtext(
                ".//nc:error-info/nc:session-id", namespaces=NSMAP
            )
            check(
                "lock_denied_session_id",
                holder == str(m.session_id),
                f"lock-denied error-info/session-id is {holder!r}, holder is {m.session_id}: {rpc_error_xml(e)}",
            )
        cfg = route_config("z16", "a2")
        expect_rpc_error("edit_config_while_locked", lambda: s2.edit_config(target="running", config=cfg), ("in-use", "lock-denied"), f"edit-config running (other session holds lock) {cfg}")
        m.unlock("running")
        s2.lock("running")
        summary["lock_after_unlock"] = True
        s2.unlock("running")

        # A lock dies with its session (RFC 6241 §7.5).
        s2.lock("running")
        s2.close_session()
        time.sleep(0.3)
        m.lock("running")
        m.unlock("running")
        summary["lock_released_on_close"] = True

        # kill-session releases the victim's lock.
        s3 = connect()
        s3.lock("running")
        m.kill_session(s3.session_id)
        time.sleep(0.3)
        m.lock("running")
        m.unlock("running")
        summary["kill_session_releases_lock"] = True
        check(
            "killed_session_closed",
            _dead(s3),
            "killed session still answers RPCs",
        )
    finally:
        for s in (s2,):
            try:
                if s.connected:
                    s.close_session()
            except Exception:
                pass


def _dead(s):
    try:
        s.get_config("running")
        return False
    except Exception:
        return True


# ----------------------------------------------------------------------------
# 7. read-only user
# ----------------------------------------------------------------------------
@section("readonly")
def check_readonly(m):
    ro = connect(user=READONLY)
    try:
        ro.get(filter=("subtree", ROUTES_FILTER))
        summary["readonly_get"] = True
        cfg = route_config("z16", "a2")
        expect_rpc_error("readonly_edit_denied", lambda: ro.edit_config(target="running", config=cfg), ("access-denied",), f"edit-config running as {READONLY['username']}: {cfg}")
        check("readonly_running_unchanged", "z16" not in routes(m), "read-only user's edit reached running")
        expect_rpc_error("readonly_candidate_denied", lambda: ro.edit_config(target="candidate", config=cfg), ("access-denied",), f"edit-config candidate as {READONLY['username']}: {cfg}")
        expect_rpc_error("readonly_commit_denied", lambda: ro.commit(), ("access-denied",), f"commit as {READONLY['username']}")
    finally:
        ro.close_session()


# ----------------------------------------------------------------------------
# 8. notifications
# ----------------------------------------------------------------------------
def wait_link_notification(sess, link, state, timeout=10.0):
    """Return (notification xml, [other notifications seen]) for link-status-change link/state."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        n = sess.take_notification(block=True, timeout=max(0.1, deadline - time.monotonic()))
        if n is None:
            break
        root = etree.fromstring(n.notification_xml.encode())
        seen.append(n.notification_xml)
        lsc = root.find("km:link-status-change", NSMAP)
        if lsc is not None and lsc.findtext("km:link-id", namespaces=NSMAP) == link and lsc.findtext("km:oper-state", namespaces=NSMAP) == state:
            return n.notification_xml, root, seen
    return None, None, seen


@section("notifications")
def check_notifications():
    subs = {}
    try:
        for node in ("a1", "a2"):
            s = connect(node)
            s.create_subscription()
            subs[node] = s
        qkdni("link", "down", "a1-a2")
        for node, s in subs.items():
            xml, root, seen = wait_link_notification(s, "a1-a2", "down")
            ok = check(f"notification_link_down_{node}", xml is not None, f"no link-status-change a1-a2 down within 10 s on {node}; got {seen}")
            if ok:
                log(f"     {node}: {xml}")
                check(
                    f"notification_format_{node}",
                    root.tag == f"{{{NS_NOTIF}}}notification" and root.findtext("notif:eventTime", namespaces=NSMAP),
                    f"not an RFC 5277 notification: {xml}",
                )
                prev = root.findtext("km:link-status-change/km:previous-state", namespaces=NSMAP)
                check(f"notification_previous_state_{node}", prev == "up", f"previous-state {prev!r}: {xml}")
        qkdni("link", "up", "a1-a2")
        for node, s in subs.items():
            xml, root, seen = wait_link_notification(s, "a1-a2", "up")
            check(f"notification_link_up_{node}", xml is not None, f"no link-status-change a1-a2 up within 10 s on {node}; got {seen}")
        # create-subscription twice on one session -> error (RFC 5277 §2.1.1)
        s = subs["a1"]
        expect_rpc_error("second_subscription_rejected", lambda: s.create_subscription(), ("in-use", "operation-failed"), "second <create-subscription/> on the same session")
        # interleave: the subscribed session still answers RPCs
        s.get_config("running", filter=("subtree", ROUTES_FILTER))
        summary["interleave_rpc_after_subscription"] = True
    finally:
        for s in subs.values():
            try:
                s.close_session()
            except Exception:
                pass


# ----------------------------------------------------------------------------
# 9. netconf-console2
# ----------------------------------------------------------------------------
@section("netconf_console2")
def check_netconf_console(m, workdir):
    nc = netconf_console_bin()
    host, port = hostport("a1")
    # --opt=value: a value beginning with "-" is not taken for an option
    common = [nc, f"--host={host}", f"--port={port}", f"--user={ADMIN['username']}", f"--password={ADMIN['password']}"]

    def run(name, *args, expect_rc=0, must=(), must_not=()):
        cmd = [*common, *args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            fail(name, f"netconf-console2 {' '.join(args)} hung (>30 s)")
            return None
        out = p.stdout + p.stderr
        problems = []
        if expect_rc is not None and p.returncode != expect_rc:
            problems.append(f"exit {p.returncode} (expected {expect_rc})")
        problems += [f"missing {s!r}" for s in must if s not in out]
        problems += [f"unexpected {s!r}" for s in must_not if s in out]
        check(name, not problems, lambda: f"netconf-console2 {' '.join(args)}: {', '.join(problems)}\n{out[:3000]}")
        return out

    run("ncc_hello", "--hello", must=(BASE11, "qkdni-km"))
    run("ncc_hello_v11", "-v", "1.1", "--get-config", must=("<qkd_node",))
    run("ncc_base10", "-v", "1.0", "--get-config", must=("<qkd_node",), must_not=("rpc-error",))
    run("ncc_get_config", "--get-config", must=("<qkd_node", "relay-routes"), must_not=("rpc-error", "oper-state"))
    run(
        "ncc_get_xpath",
        "--get",
        "-x",
        "/n:qkd_node/km:key-manager/km:relay-routes",
        "-N",
        f"n={NS_NODE}",
        f"km={NS_KM}",
        must=("<destination>a5</destination>",),
        must_not=("rpc-error", "<saes>", "key-pool"),
    )
    run(
        "ncc_get_subtree",
        "--get",
        "--filter",
        f"/n:qkd_node/n:qkd_links/n:qkd_link[n:qkdl_id='{A1_A2}']/km:key-pool",
        "-N",
        f"n={NS_NODE}",
        f"km={NS_KM}",
        must=("own-blocks",),
        must_not=("rpc-error", "relay-routes"),
    )
    run("ncc_get_schema", "--get-schema", "qkdni-km", must=("module qkdni-km",), must_not=("rpc-error",))

    f = workdir / "route-z13.xml"
    f.write_text(
        f'<qkd_node xmlns="{NS_NODE}"><key-manager xmlns="{NS_KM}"><relay-routes><route>'
        f"<destination>z13</destination><next-hop>a2</next-hop></route></relay-routes></key-manager></qkd_node>"
    )
    run("ncc_edit_config", "--edit-config", str(f), must=("<ok",), must_not=("rpc-error",))
    check("ncc_edit_config_applied", routes(m).get("z13") == "a2", f"z13 not in running after netconf-console2 --edit-config: {routes(m)}")
    bad = workdir / "route-bad.xml"
    bad.write_text(
        f'<qkd_node xmlns="{NS_NODE}"><key-manager xmlns="{NS_KM}"><relay-routes><route>'
        f"<destination>z16</destination><next-hop>a5</next-hop></route></relay-routes></key-manager></qkd_node>"
    )
    run("ncc_edit_config_invalid_reports_error", "--edit-config", str(bad), expect_rc=None, must=("rpc-error", "error-tag"))
    run("ncc_lock_unlock", "--lock", "--unlock", must=("<ok",), must_not=("rpc-error",))
    run("ncc_lock_edit_unlock", "--lock", "--delete", "/n:qkd_node/km:key-manager/km:relay-routes/km:route[km:destination='z13']", "-N", f"n={NS_NODE}", f"km={NS_KM}", "--unlock", must=("<ok",), must_not=("rpc-error",))
    check("ncc_delete_applied", "z13" not in routes(m), f"z13 still in running after netconf-console2 --delete: {routes(m)}")
    # A lock held by our ncclient session blocks netconf-console2's lock.
    m.lock("running")
    try:
        run("ncc_lock_denied", "--lock", expect_rc=None, must=("lock-denied",))
    finally:
        m.unlock("running")
    # candidate via the CLI
    run("ncc_candidate_commit", "--db", "candidate", "--edit-config", str(f), "--validate", "candidate", "--commit", must=("<ok",), must_not=("rpc-error",))
    check("ncc_candidate_commit_applied", routes(m).get("z13") == "a2", f"z13 not in running after netconf-console2 candidate commit: {routes(m)}")
    m.edit_config(target="running", config=route_config("z13", None, operation="remove"))


def cleanup(workdir):
    try:
        qkdni("link", "up", "a1-a2")
    except Exception as e:  # noqa: BLE001
        log(f"cleanup: link up: {e}")
    try:
        m = connect()
        try:
            try:
                m.discard_changes()
            except Exception:
                pass
            left = [d for d in routes(m) if d in TEST_DESTS]
            for d in left:
                m.edit_config(target="running", config=route_config(d, None, operation="remove"))
            if left:
                log(f"cleanup: removed leftover routes {left}")
        finally:
            m.close_session()
    except Exception as e:  # noqa: BLE001
        log(f"cleanup failed: {e}")
    shutil.rmtree(workdir, ignore_errors=True)


def main():
    if not shutil.which("yanglint"):
        sys.exit("yanglint not found (apt-get install yang-tools / libyang tools)")
    workdir = Path(tempfile.mkdtemp(prefix="nc-interop-"))
    schema_dir = workdir / "schemas"
    schema_dir.mkdir()
    try:
        try:
            m = connect()
        except Exception as e:  # noqa: BLE001
            sys.exit(f"FAIL ncclient_connect: cannot open a NETCONF session to a1 {NODES['a1']['netconf']}: {type(e).__name__}: {e}")
        try:
            check_connect(m)
            check_schemas(m, schema_dir)
            check_filters(m)
            check_edit_config(m)
            check_candidate(m)
            check_locks(m)
            check_readonly(m)
            check_notifications()
            check_netconf_console(m, workdir)
            # the first session survived everything above
            m.get_config("running", filter=("subtree", ROUTES_FILTER))
            summary["first_session_alive"] = True
            m.close_session()
        finally:
            if m.connected:
                try:
                    m.close_session()
                except Exception:
                    pass
    finally:
        cleanup(workdir)
    summary["failed"] = failures
    if failures:
        log(f"{len(failures)} check(s) failed: {', '.join(failures)}")
    print(json.dumps(summary))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
