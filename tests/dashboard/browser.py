"""Drives the controller dashboard in a real headless browser (Debian's chromium under
Playwright) for tests/dashboard/mod.rs, which checks what this prints.

Usage: browser.py CONFIG_JSON. CONFIG has: chromium (executable), base (the controller's
REST base URL), login_path (a one-time login), qkdni (the binary) and dir (the testbed) to
cut a link with, session (the id of a session whose route uses link cut), nodes (every node
the page must show), screenshot (PNG path). Prints one JSON object of observations on
stdout; every wait is on a condition in the page, bounded by a timeout.
"""

import json
import subprocess
import sys
import time

from playwright.sync_api import sync_playwright

RED = "rgb(217, 48, 37)"

# the links the page shows on session S's route: [data-sessions] lists the sessions using a
# link, class on-route marks the routes shown
ROUTE = """s => [...document.querySelectorAll('line[data-link]')]
    .filter(l => l.dataset.sessions.split(' ').includes(s) && l.classList.contains('on-route'))
    .map(l => l.dataset.link).sort()"""


def main():
    config = json.loads(sys.argv[1])
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=config["chromium"])
        # the testbed's CA is not in the browser's store; the TLS itself is the controller's
        anonymous = browser.new_context(ignore_https_errors=True)
        page = anonymous.new_page()
        response = page.goto(config["base"] + "/dashboard/")
        out["anonymous_page_status"] = response.status
        out["anonymous_page_says_login"] = "one-time login" in page.content()
        api = anonymous.request.get(config["base"] + "/dashboard/api/snapshot")
        out["anonymous_api_status"] = api.status
        out["anonymous_api_type"] = api.headers.get("content-type")
        stream = anonymous.request.get(config["base"] + "/dashboard/api/stream")
        out["anonymous_stream_status"] = stream.status
        anonymous.close()

        context = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1480, "height": 900}
        )
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        login_url = config["base"] + config["login_path"]
        response = page.goto(login_url)
        out["login_status"] = response.status
        out["login_landed"] = page.url
        out["cookies"] = [
            {k: c[k] for k in ("name", "httpOnly", "secure", "sameSite", "path")}
            for c in context.cookies()
        ]
        page.wait_for_function(
            "nodes => nodes.every(n => document.querySelector(`g[data-node=\"${n}\"]`))",
            arg=config["nodes"],
            timeout=20_000,
        )
        out["nodes"] = page.eval_on_selector_all(
            "g[data-node]", "gs => gs.map(g => g.dataset.node).sort()"
        )
        out["status"] = page.inner_text("#status")
        session, cut = config["session"], config["cut"]
        page.wait_for_function(
            f"([s, cut]) => ({ROUTE})(s).includes(cut)", arg=[session, cut], timeout=20_000
        )
        out["route_before"] = page.evaluate(ROUTE, session)

        # the cut: how long until the page shows the link red
        started = time.monotonic()
        subprocess.run(
            [config["qkdni"], "testbed", "link", "down", cut, "--dir", config["dir"]],
            check=True,
            capture_output=True,
        )
        commanded = time.monotonic()
        page.wait_for_function(
            """cut => { const l = document.querySelector(`line[data-link="${cut}"]`);
                return l && l.dataset.state === 'down' && getComputedStyle(l).stroke === '%s'; }"""
            % RED,
            arg=cut,
            timeout=10_000,
            polling=20,
        )
        red = time.monotonic()
        out["red_ms_from_command_start"] = round((red - started) * 1000, 1)
        out["red_ms_from_command_end"] = round((red - commanded) * 1000, 1)
        out["command_ms"] = round((commanded - started) * 1000, 1)

        # the reroute: the session's route shown without the cut link
        page.wait_for_function(
            f"""([s, cut, before]) => {{ const now = ({ROUTE})(s);
                return now.length > 0 && !now.includes(cut) && now.join() !== before.join(); }}""",
            arg=[session, cut, out["route_before"]],
            timeout=30_000,
            polling=50,
        )
        out["rerouted_ms_from_command_start"] = round((time.monotonic() - started) * 1000, 1)
        out["route_after"] = page.evaluate(ROUTE, session)
        out["path_text"] = page.inner_text(f'#sessions [data-path="{session}"]')
        page.wait_for_selector(f'#alarms [data-alarm="link-down"][data-subject="{cut}"]')
        page.wait_for_selector('#events li[data-kind="link-state"]')
        page.wait_for_selector('#events li[data-kind="reroute"]')
        out["alarms"] = page.eval_on_selector_all(
            "#alarms li[data-alarm]", "ls => ls.map(l => l.dataset.alarm + ' ' + l.dataset.subject)"
        )
        out["peer_abstract_edges"] = page.eval_on_selector_all(
            "line[data-abstract]", "ls => ls.map(l => l.dataset.abstract).sort()"
        )
        page.screenshot(path=config["screenshot"], full_page=True)
        out["errors"] = errors
        out["foreign_requests"] = [u for u in requests if not u.startswith(config["base"])]
        context.close()

        # the same link again, from another browser: spent
        again = browser.new_context(ignore_https_errors=True)
        page = again.new_page()
        response = page.goto(login_url)
        out["reused_login_status"] = response.status
        out["reused_login_cookies"] = len(again.cookies())
        response = page.goto(config["base"] + "/dashboard/")
        out["reused_login_page_status"] = response.status
        again.close()
        browser.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
