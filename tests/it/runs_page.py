"""The Runs page in a real browser: Debian's Chromium driven by Playwright for Python.

Run by tests/it/runs_page.rs as `python3 runs_page.py <scenario>` with the scenario's settings as
JSON on stdin; prints one JSON object (what the Rust test checks further) as its last line. Any
failed expectation raises, and the Rust test shows the traceback.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

CFG = json.load(sys.stdin)
BASE = CFG["base"]
WS = CFG["ws"]
SHOTS = CFG["screenshots"]
TIMEOUT_MS = 60_000
expect.set_options(timeout=TIMEOUT_MS)


def call(method, path, token, body=None):
    """The API, as a script outside the browser calls it: (status, text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def run(path, token, args):
    status, text = call("POST", f"/api/w/{WS}/jobs/run/p/{path}", token, args)
    assert status == 201, (status, text)
    return text.strip()


class Browser:
    """One Chromium; pages record every console error and uncaught exception (a CSP violation
    shows as a console error), which the scenario fails on at the end. A failed request is
    logged by Chromium as a console error too: only those the scenario provokes on purpose
    (`expect_refused`, by URL) are not problems. Every response's status is kept by URL."""

    # Each page first asks who is logged in: before a login that is a 401 the page handles.
    REFUSED_ON_PURPOSE = ["/api/users/whoami"]

    def __init__(self, pw):
        self.browser = pw.chromium.launch(
            executable_path=CFG["chromium"], args=["--no-sandbox"]
        )
        self.problems = []
        self.refused_on_purpose = list(self.REFUSED_ON_PURPOSE)
        self.responses = []

    def expect_refused(self, url_part):
        """The scenario is about to provoke a 4xx from a URL containing `url_part`."""
        self.refused_on_purpose.append(url_part)

    def page(self, width=1280, height=900, dark=False):
        context = self.browser.new_context(
            viewport={"width": width, "height": height},
            color_scheme="dark" if dark else "light",
        )
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)

        def on_console(msg):
            if msg.type != "error":
                return
            url = (msg.location or {}).get("url", "")
            if "Failed to load resource" in msg.text and any(
                part in url for part in self.refused_on_purpose
            ):
                return
            self.problems.append(f"console: {msg.text} ({url})")

        page.on("console", on_console)
        page.on("response", lambda res: self.responses.append((res.url, res.status)))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        return page

    def close(self):
        self.browser.close()
        assert not self.problems, "\n".join(self.problems)


def shot(page, name):
    os.makedirs(SHOTS, exist_ok=True)
    path = os.path.join(SHOTS, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    return path


def row(page, job_id):
    return page.locator(f'tr[data-id="{job_id}"]')


def login_with_token(page, token):
    page.goto(BASE + "/")
    page.locator('form[data-role="token-form"] input[name="token"]').fill(token)
    page.locator('form[data-role="token-form"] button').click()
    expect(page.locator("h1")).to_have_text("Runs")


def runs_url(query=""):
    return f"{BASE}/#/w/{WS}/runs{query}"


def no_horizontal_scroll(page):
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1, f"the page is {overflow} px wider than the screen"


# ------------------------------------------------------------------ scenarios


def scenario_live(b):
    """Log in, follow runs live, read one, cancel one, run from the form, see a flow's steps."""
    out = {}
    token = CFG["token"]
    page = b.page()

    # A one-time login link leaves the address bar at once, and logs in only when the user
    # confirms (a link someone else sent must not log this browser in unasked); the same link
    # again does not.
    page.goto(f"{BASE}/?login={CFG['login_code']}")
    expect(page.locator("h1")).to_have_text("Sign in with this login link?")
    assert "login=" not in page.url, page.url
    page.locator('[data-role="sign-in"]').click()
    expect(page.locator("h1")).to_have_text("Runs")
    assert "login=" not in page.url, page.url
    expect(page.locator("#who")).to_have_text(CFG["email"])
    expect(page.locator('[data-role="empty"]')).to_contain_text("No runs in this workspace")
    shot(page, "runs-empty-1280")
    page.locator("#logout").click()
    expect(page.locator('[data-role="message"]')).to_have_text("You are logged out.")
    page.goto(f"{BASE}/?login={CFG['login_code']}")
    b.expect_refused("/api/auth/login_code")
    page.locator('[data-role="sign-in"]').click()
    expect(page.locator('[data-role="message"]')).to_contain_text("used already or has expired")

    # A token that is not valid: back at the login form, told what to do.
    page.locator('form[data-role="token-form"] input[name="token"]').fill("not-a-valid-token")
    page.locator('form[data-role="token-form"] button').click()
    expect(page.locator('[data-role="message"]')).to_contain_text("log in again")

    # Email and password: the login cookie.
    page.locator('input[name="email"]').fill(CFG["email"])
    page.locator('input[name="password"]').fill(CFG["password"])
    page.locator('form[data-role="password-form"] button').click()
    expect(page.locator("h1")).to_have_text("Runs")

    # A run started elsewhere appears on the open list, is seen running (it takes about 4 s),
    # and finishes there.
    slow = run("u/alice/slow", token, {"n": 3})
    out["slow"] = slow
    expect(row(page, slow)).to_be_visible()
    expect(row(page, slow).locator(".badge")).to_have_text("running")
    expect(row(page, slow).locator(".badge")).to_have_text("success")
    expect(row(page, slow).locator(".who")).to_have_text("alice")
    assert row(page, slow).locator(".duration").inner_text() != "–"

    # Its page: arguments, logs and result.
    row(page, slow).locator("a").first.click()
    expect(page.locator('[data-role="title"]')).to_have_text("u/alice/slow")
    expect(page.locator('[data-role="status"]')).to_have_text("success")
    expect(page.locator('[data-role="args"]')).to_contain_text('"n": 3')
    expect(page.locator('[data-role="logs"]')).to_contain_text("step 3 of 3")
    expect(page.locator('[data-role="result"]')).to_contain_text('"counted": 3')
    expect(page.locator('[data-role="cancel"]')).to_be_hidden()
    shot(page, "run-1280")

    # A long run: its page follows it live, and Cancel stops it.
    long = run("u/alice/long", token, {})
    out["long"] = long
    page.goto(f"{runs_url()}/{long}")
    expect(page.locator('[data-role="status"]')).to_have_text("running")
    expect(page.locator('[data-role="logs"]')).to_contain_text("waiting for a cancel")
    # The page follows it over the SSE route (not by falling back to polling).
    deadline = time.time() + TIMEOUT_MS / 1000
    while not (sse := [s for u, s in b.responses if f"/jobs_u/getupdate_sse/{long}" in u]):
        assert time.time() < deadline, "the run page never opened its SSE stream"
        page.wait_for_timeout(100)
    assert all(s == 200 for s in sse), sse
    page.locator('[data-role="cancel"]').click()
    expect(page.locator('[data-role="status"]')).to_have_text("canceled")
    expect(page.locator('[data-role="result"]')).to_contain_text("Canceled")
    expect(page.locator("#notice")).to_contain_text("Cancel requested")

    # The form: client-side checks first, then the API's answer, then a run.
    page.locator("#nav-new").click()
    expect(page.locator("h1")).to_have_text("Run a script or flow")
    form = page.locator('form[data-role="form"]')
    form.locator('input[name="path"]').fill("u/alice/hello")
    form.locator('textarea[name="args"]').fill('{"name": ')
    form.locator('button[type="submit"]').click()
    expect(form.locator('[data-role="error"]')).to_contain_text("not valid JSON")
    form.locator('textarea[name="args"]').fill("[1, 2]")
    form.locator('button[type="submit"]').click()
    expect(form.locator('[data-role="error"]')).to_contain_text("must be a JSON object")
    form.locator('input[name="path"]').fill("u/alice/nothing_here")
    form.locator('textarea[name="args"]').fill("{}")
    b.expect_refused("/jobs/run/p/u/alice/nothing_here")
    form.locator('button[type="submit"]').click()
    expect(form.locator('[data-role="error"]')).to_contain_text("script not found")
    form.locator('input[name="path"]').fill("u/alice/hello")
    form.locator('textarea[name="args"]').fill('{"name": "form"}')
    form.locator('button[type="submit"]').click()
    expect(page.locator('[data-role="title"]')).to_have_text("u/alice/hello")
    expect(page.locator('[data-role="result"]')).to_contain_text("hello form")
    out["form"] = page.url.rsplit("/", 1)[1]

    # A flow from the form: its steps, each with its status and a link to its job.
    page.locator("#nav-new").click()
    form = page.locator('form[data-role="form"]')
    form.locator('select[name="kind"]').select_option("flow")
    form.locator('input[name="path"]').fill("u/alice/two_steps")
    form.locator('textarea[name="args"]').fill('{"x": 4}')
    form.locator('button[type="submit"]').click()
    expect(page.locator('[data-role="status"]')).to_have_text("success")
    steps = page.locator('[data-role="steps"] li')
    expect(steps).to_have_count(2)
    expect(steps.nth(0)).to_have_attribute("data-status", "success")
    expect(steps.nth(1)).to_have_attribute("data-status", "success")
    expect(page.locator('[data-role="result"]')).to_contain_text("10")
    out["flow"] = page.url.rsplit("/", 1)[1]
    shot(page, "run-flow-1280")
    steps.nth(0).locator("a.step-job").click()
    expect(page.locator('[data-role="status"]')).to_have_text("success")
    expect(page.locator('[data-role="result"]')).to_contain_text("5")
    expect(page.locator(".facts")).to_contain_text(out["flow"])
    out["step"] = page.url.rsplit("/", 1)[1]

    # Filters: by path, by status.
    page.goto(runs_url("?script_path_exact=u/alice/long"))
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(row(page, long)).to_be_visible()
    page.goto(runs_url("?status=success&job_kinds=flow"))
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(row(page, out["flow"])).to_be_visible()
    page.goto(runs_url("?script_path_exact=u/alice/none"))
    expect(page.locator('[data-role="empty"]')).to_contain_text("No runs match these filters")

    # The list and a run page at 1280 and 360 px, light and dark.
    for dark in (False, True):
        suffix = "-dark" if dark else ""
        for width in (1280, 360):
            p = b.page(width=width, height=800, dark=dark)
            login_with_token(p, token)
            expect(row(p, slow)).to_be_visible()
            shot(p, f"runs-{width}{suffix}")
            no_horizontal_scroll(p)
            p.goto(f"{runs_url()}/{slow}")
            expect(p.locator('[data-role="logs"]')).to_contain_text("step 3 of 3")
            shot(p, f"run-{width}{suffix}")
            no_horizontal_scroll(p)
            p.context.close()
    return out


def scenario_permissions(b):
    """A member without rights on another's scripts sees only their own runs."""
    page = b.page()
    login_with_token(page, CFG["member_token"])
    expect(row(page, CFG["own_job"])).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(1)
    assert row(page, CFG["other_job"]).count() == 0
    # Opened by its address, another's run is as unknown as a run that does not exist.
    b.expect_refused(f"/jobs_u/get/{CFG['other_job']}")
    page.goto(f"{runs_url()}/{CFG['other_job']}")
    expect(page.locator('[data-role="error"]')).to_contain_text("you may not see it")
    expect(page.locator('[data-role="args"]')).to_have_text("")
    # The admin sees both.
    admin = b.page()
    login_with_token(admin, CFG["token"])
    expect(row(admin, CFG["own_job"])).to_be_visible()
    expect(row(admin, CFG["other_job"])).to_be_visible()
    # The member's session is revoked while the page is open: a 401 takes it back to the
    # login form, saying what to do.
    status, text = call(
        "DELETE", f"/api/users/tokens/delete/{CFG['member_token'][:10]}", CFG["member_token"]
    )
    assert status == 200, (status, text)
    b.expect_refused(f"/api/w/{WS}/jobs/list")
    page.goto(runs_url())
    expect(page.locator('[data-role="message"]')).to_contain_text("log in again")
    return {}


def scenario_thousand(b):
    """1,000 runs on one page render within 300 ms of the API's answer."""
    page = b.page()
    login_with_token(page, CFG["token"])
    timings = []
    for i in range(3):
        # A different page size each time so the list is fetched and drawn anew.
        per_page = 1000
        page.goto(runs_url(f"?per_page={per_page}&created_before=2100-01-01T00:00:0{i}"))
        expect(page.locator("tbody tr")).to_have_count(1000)
        ms = page.evaluate(
            "() => { const m = performance.getEntriesByName('millrace:runs-render');"
            " return m[m.length - 1].duration; }"
        )
        timings.append(ms)
    # A check of the page's own measure, with performance.now() here: the DOM it built is
    # complete and laid out.
    rows = page.evaluate(
        "() => { const t = performance.now(); const n = document.querySelectorAll("
        "'tbody tr').length; return [n, performance.now() - t]; }"
    )
    assert rows[0] == 1000, rows
    no_horizontal_scroll(page)
    shot(page, "runs-1000-1280")
    return {"timings_ms": timings}


def main():
    scenario = globals()[f"scenario_{sys.argv[1]}"]
    started = time.time()
    with sync_playwright() as pw:
        b = Browser(pw)
        try:
            out = scenario(b)
        except BaseException:
            b.browser.close()
            raise
        b.close()
    out["seconds"] = round(time.time() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
