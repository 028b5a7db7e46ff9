"""The demo web client of ``messaging dev``, driven in a real headless Chromium.

Debian's ``chromium`` (hack/test.sh installs it) through Playwright for Python; Playwright's own
browser downloads are never used. Two browser contexts are two demo users on one ``messaging dev``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from messaging.app import create_app
from messaging.demo import CONTENT_SECURITY_POLICY
from messaging.settings import Settings
from tests.support.dev import running_dev

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")


@pytest.fixture
async def dev_url(tmp_path: Path) -> AsyncIterator[str]:
    """``messaging dev`` as a user runs it, in a fresh directory."""
    async with running_dev(tmp_path) as dev:
        assert any("demo web client: open" in line for line in dev.printed)
        yield dev.url


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            await browser.close()


async def sign_in(browser: Browser, url: str, user: str, problems: list[str]) -> Page:
    context = await browser.new_context()
    page = await context.new_page()
    # A CSP violation or a script error shows up here: the page must run under its own policy.
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(url + "/")
    await page.click(f"#users button[data-user={user}]")
    await expect(page.get_by_test_id("connection")).to_have_text("online")
    await expect(page.get_by_test_id("whoami")).to_have_text(f"signed in as {user}")
    return page


async def test_two_demo_users_exchange_messages_and_see_typing_in_chromium(
    dev_url: str, browser: Browser
) -> None:
    problems: list[str] = []
    alice = await sign_in(browser, dev_url, "alice", problems)
    bob = await sign_in(browser, dev_url, "bob", problems)

    await alice.fill("#participant", "bob")
    await alice.click("#new-conversation button")
    await expect(alice.get_by_test_id("title")).to_have_text("bob")
    await alice.fill("#content", "hello bob, from the browser")
    await alice.click("#composer button")
    mine = alice.locator("#messages li.mine")
    await expect(mine).to_contain_text("hello bob, from the browser")

    # Bob did not open anything: the conversation appears in his list with one unread message.
    entry = bob.locator("#conversations li", has_text="alice")
    await expect(entry.get_by_test_id("unread")).to_have_text("1")
    await expect(mine.get_by_test_id("status")).to_contain_text("delivered")
    await entry.click()
    await expect(bob.get_by_test_id("messages")).to_contain_text("hello bob, from the browser")
    await expect(mine.get_by_test_id("status")).to_contain_text("read")  # messageStatus
    await expect(bob.get_by_test_id("presence")).to_contain_text("alice: online")

    await bob.locator("#content").press_sequentially("hi al")
    await expect(alice.get_by_test_id("typing")).to_have_text("bob is typing…")
    await bob.locator("#content").press_sequentially("ice")
    await bob.click("#composer button")
    await expect(alice.get_by_test_id("messages")).to_contain_text("bob: hi alice")
    await expect(alice.get_by_test_id("typing")).to_have_text("")

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "demo.png"
    await alice.screenshot(path=str(screenshot), full_page=True)
    print(f"demo client screenshot: {screenshot}")
    assert screenshot.stat().st_size > 0
    assert problems == []


async def test_demo_page_is_served_with_a_strict_content_security_policy(dev_url: str) -> None:
    async with httpx.AsyncClient(base_url=dev_url) as client:
        page = await client.get("/")
        script = await client.get("/demo/socket.io.min.js")
        token = await client.post("/demo/token", json={"user": "alice"})
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text  # no inline script: the policy would refuse it
    assert script.text.startswith("/*!\n * Socket.IO v4.")  # the vendored client and its license
    assert token.json()["user"] == "alice"


async def test_demo_token_endpoint_mints_only_for_demo_users(dev_url: str) -> None:
    async with httpx.AsyncClient(base_url=dev_url) as client:
        stranger = await client.post("/demo/token", json={"user": "mallory"})
        garbage = await client.post("/demo/token", content=b"not json")
        traversal = await client.get("/demo/..%2Fsettings.py")
    assert stranger.status_code == 422
    assert "token" not in stranger.json()
    assert garbage.status_code == 422
    assert traversal.status_code == 404


async def test_demo_client_is_not_served_unless_turned_on() -> None:
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        page = await client.get("/")
        token = await client.post("/demo/token", json={"user": "alice"})
    assert page.status_code == 404
    assert token.status_code == 404


def test_demo_client_is_refused_in_production_mode() -> None:
    with pytest.raises(ValueError, match="MESSAGING_DEMO_CLIENT"):
        Settings(
            mode="production",
            demo_client=True,
            jwt_secret="x" * 64,
            database_url="postgresql+asyncpg://db/messaging",
        )
