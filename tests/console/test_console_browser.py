"""The console in a real headless Chromium against a real control plane and real agents.

One fleet for the module (``browser_harness.ConsoleFleet``: ``stanch-cp`` with
``--console-listen``, four ``agent.cli run`` processes, tokens minted with ``stanch-cp tokens
create``), one browser. Each test states what it needs from the fleet (``baseline()`` puts every
host back on a good bundle), so the order does not matter. Every wait is bounded.

Screenshots of each page land in ``docs/screenshots/``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from browser_harness import (
    APPROVE_POLICY,
    CHROMIUM,
    CHROMIUM_ARGS,
    NAME,
    SHOTS,
    ConsoleFleet,
    forger,
)

from controlplane.fleet_demo import BREAK, POLICY, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 800, "height": 900}
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleFleet]:
    work = tmp_path_factory.mktemp("console-fleet")
    demo = ConsoleFleet(work)
    try:
        demo.start()
        yield demo
    finally:
        demo.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


def session(browser: Any, fleet: ConsoleFleet, who: str, viewport: dict[str, int] = WIDE) -> Any:
    """A fresh browser context, logged in as ``who`` through the login form."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(fleet.console + "/")
    assert page.url.endswith("/login")
    page.fill("input[name=token]", fleet.tokens[who])
    page.click("button[type=submit]")
    page.wait_for_url(fleet.console + "/")
    return page


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


def test_log_in_and_see_the_fleet(browser: Any, fleet: ConsoleFleet) -> None:
    fleet.baseline()
    context = browser.new_context(viewport=WIDE)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(fleet.console + "/hosts/web-1")
    assert page.url.endswith("/login"), "pages need a session"
    shot(page, "login.png")
    page.fill("input[name=token]", "stk_not_a_token")
    page.click("button[type=submit]")
    assert "Unknown, expired or revoked token" in page.inner_text(".flash.bad")
    page.fill("input[name=token]", fleet.tokens["olga"])
    page.click("button[type=submit]")
    page.wait_for_url(fleet.console + "/")
    cookie = next(c for c in context.cookies() if c["name"] == "stanch_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert fleet.tokens["olga"] not in cookie["value"] and "token" not in page.url
    page.wait_for_selector("#fleet-table tbody tr >> nth=3")
    rows = page.locator("#fleet-table tbody tr")
    assert rows.count() == 4
    text = page.inner_text("#fleet-table")
    for host in ("web-1", "web-2", "web-3", "db-1"):
        assert host in text
    assert text.count("connected") == 4 and "disconnected" not in text
    assert f"v{fleet.version}" in text and fleet.good[:12] in text
    assert "olga" in page.inner_text("header") and "operator" in page.inner_text("header")
    shot(page, "fleet.png")
    page.fill("input[name=selector]", "role=db")
    page.click("form.filter button")
    page.wait_for_url("**/?selector=role%3Ddb")
    assert page.locator("#fleet-table tbody tr").count() == 1
    page.set_viewport_size(NARROW)
    page.goto(fleet.console + "/")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW["width"], f"the page scrolls sideways at 800px ({width}px)"
    shot(page, "fleet-narrow.png")
    context.close()


def test_watch_a_rollout_advance_wave_by_wave(browser: Any, fleet: ConsoleFleet) -> None:
    fleet.baseline()
    page = session(browser, fleet, "olga")
    page.goto(fleet.console + "/rollouts")
    page.evaluate("window.__stanchNoReload = 1")
    digest = fleet.release(POLICY.format(script='touch "$HOME/var/run/app.heartbeat" # v2'))
    rollout = fleet.rollout(digest, "1,50%,100%", "6s")
    card = f'article[data-rollout="{rollout}"]'
    wave = card + ' li[data-wave="{}"][data-state="{}"]'
    page.wait_for_selector(wave.format(1, "baking"))  # appeared by itself: no reload
    assert page.locator(card + " .bake [data-until]").count() == 1
    assert page.get_attribute(card + ' li[data-wave="3"]', "data-state") == "pending"
    page.wait_for_selector(wave.format(2, "baking"))
    assert page.get_attribute(card + ' li[data-wave="1"]', "data-state") == "passed"
    assert page.get_attribute(card + ' li[data-wave="3"]', "data-state") == "pending"
    page.wait_for_selector(card + ' li[data-wave="2"] progress:not([value="0"])')
    shot(page, "rollouts.png")
    page.wait_for_selector(wave.format(3, "baking"))
    assert page.get_attribute(card + ' li[data-wave="2"]', "data-state") == "passed"
    page.wait_for_selector(card + '[data-state="completed"]')
    assert page.evaluate("window.__stanchNoReload") == 1, "the page reloaded"
    gates = page.locator(card + " tr[data-gate]")
    assert gates.count() >= 1
    assert page.locator(card + ' tr[data-passed="no"]').count() == 0
    fleet.good = digest
    page.context.close()


def test_bad_bundle_halts_at_the_canary_and_rolls_back(browser: Any, fleet: ConsoleFleet) -> None:
    good = fleet.baseline()
    page = session(browser, fleet, "olga")
    page.goto(fleet.console + "/rollouts")
    bad = fleet.release(POLICY.format(script=BREAK))
    rollout = fleet.rollout(bad, "1,50%,100%", "60s")
    card = f'article[data-rollout="{rollout}"]'
    page.wait_for_selector(card + ' li[data-wave="1"][data-state="baking"]')

    def canary() -> str:
        return next((h for h, d in fleet.bundles_on().items() if d == bad), "")

    host = wait_for("the canary to run the bad bundle", canary, 60, AssertionError)
    fleet.break_app(host)  # its fix now fails: the failure-rate gate must trip
    fleet.spent.add(host)
    page.wait_for_selector(card + '[data-state="rolled_back"]', timeout=90_000)
    halted = page.get_attribute(card + ' li[data-wave="1"]', "data-state")
    assert halted == "halted"
    assert page.get_attribute(card + ' li[data-wave="2"]', "data-state") == "skipped"
    tripped = page.locator(card + ' tr[data-passed="no"]')
    assert tripped.count() >= 1
    assert "TRIPPED" in tripped.first.inner_text()
    assert "failure_rate" in page.inner_text(card)
    assert page.inner_text(card + " [data-role=reason]").strip()
    shot(page, "rollout-rolled-back.png")
    wait_for(
        "the canary to be rolled back", lambda: fleet.bundles_on()[host] == good, 60, AssertionError
    )
    page.goto(f"{fleet.console}/hosts/{host}?policy={NAME}")
    page.wait_for_selector('article.decision[data-kind="execution"]')
    text = page.inner_text("main")
    assert "remediation FAILED" in text or "NOT fixed" in text
    assert "restarting the wrong thing" in text  # the step's stderr, shown (bounded, redacted)
    shot(page, "host.png")
    fleet.heal_all()
    page.context.close()


def test_approve_a_pending_remediation(browser: Any, fleet: ConsoleFleet) -> None:
    fleet.baseline()
    digest = fleet.release(APPROVE_POLICY)
    rollout = fleet.rollout(digest, "100%", "0s")
    wait_for(
        "the approve-mode rollout",
        lambda: fleet.rollout_state(rollout) == "completed",
        90,
        AssertionError,
    )
    host = next(h for h in ("web-3", "web-2", "web-1") if h not in fleet.spent)
    fleet.break_app(host)
    page = session(browser, fleet, "olga")
    row = f'#approvals tr[data-host="{host}"][data-policy="{NAME}"]'
    deadline = time.monotonic() + 60
    while page.locator(row).count() == 0:  # (the page also updates itself)
        assert time.monotonic() < deadline, f"no pending approval shown for {host}"
        page.goto(fleet.console + "/approvals")
        page.wait_for_timeout(500)
    assert "left" in page.inner_text(row)  # its expiry
    shot(page, "approvals.png")
    page.click(row + ' button[data-action="approve"]')
    page.wait_for_selector("button[data-confirm]")
    assert "run the remediation of app-heartbeat" in page.inner_text("main")
    shot(page, "confirm.png")
    page.click("button[data-confirm]")
    page.wait_for_url(fleet.console + "/approvals")
    assert f"approved {NAME} on {host}" in page.inner_text(".flash")

    def fixed() -> bool:
        return any(r["outcome"] == "fixed" for r in fleet.reports(host, "execution"))

    wait_for(f"{host}'s approved fix to be reported fixed", fixed, 60, AssertionError)
    entries = [e for e in fleet.audit("approval.decide") if e.source == "console"]
    assert [(e.actor, e.via, e.result) for e in entries] == [("olga", "console", "ok")]
    assert entries[0].target.endswith(host)
    page.goto(f"{fleet.console}/hosts/{host}?policy={NAME}")
    assert "fixed" in page.inner_text("main")
    assert page.get_attribute("a[target=_blank]", "href") == (
        "https://runbooks.example.com/app-heartbeat"
    )
    page.goto(fleet.console + "/toil?window=1h")
    page.wait_for_selector("svg.pareto rect")
    shot(page, "toil.png")
    fleet.heal_all()
    page.context.close()


def test_viewer_cannot_act(browser: Any, fleet: ConsoleFleet) -> None:
    page = session(browser, fleet, "vic")
    for path in ("/", "/rollouts", "/approvals"):
        page.goto(fleet.console + path)
        assert page.locator("[data-action]").count() == 0, f"a viewer sees buttons on {path}"
    shot(page, "viewer.png")
    csrf = page.input_value("header input[name=csrf]")
    before = len(fleet.pauses())
    response = page.context.request.post(
        fleet.console + "/act",
        form={"csrf": csrf, "action": "pause", "policy": NAME, "ttl": "1h", "confirmed": "yes"},
    )
    assert response.status == 403 and "needs the operator role" in response.text()
    assert len(fleet.pauses()) == before
    denied = [e for e in fleet.audit("fleet.pause") if e.actor == "vic"]
    assert [e.result for e in denied] == ["PERMISSION_DENIED"]
    page.context.close()


def test_forged_cross_site_post_is_refused(browser: Any, fleet: ConsoleFleet) -> None:
    page = session(browser, fleet, "olga")
    before = len(fleet.pauses())
    # Same site (127.0.0.1), another origin: the cookie goes along, the CSRF token cannot.
    with forger(fleet.console, "127.0.0.1") as evil:
        with page.expect_response(fleet.console + "/act") as posted:
            page.goto(evil)
        assert posted.value.status == 403
    # Another site (localhost): SameSite=Strict keeps the session cookie home.
    with forger(fleet.console, "localhost") as evil:
        with page.expect_response(lambda r: r.url.startswith(fleet.console)) as posted:
            page.goto(evil)
        assert posted.value.status in (401, 403)
    assert len(fleet.pauses()) == before, "a forged request paused automation"
    page.goto(fleet.console + "/")  # the real session still works
    assert "olga" in page.inner_text("header")
    page.context.close()
