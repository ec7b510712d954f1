"""The operator console (``relaybox console``) in a real browser.

Selenium drives Debian's headless Chromium (``/usr/bin/chromium`` through
``/usr/bin/chromedriver``) against a console process serving this test's
PostgreSQL tables. What the page shows is compared with the database; the
dead letters are made by a real relay whose transport refuses, and the
retried one is delivered by a real relay afterwards.

``RELAYBOX_CONSOLE_BIN`` runs another ``relaybox`` binary (a debug build of
the CLI) instead of this environment's command; with
``RELAYBOX_CONSOLE_SCREENSHOTS=DIR`` the test saves the pictures of
``docs/console.md`` into ``DIR``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import psycopg
import pytest
from conftest import wait_for
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

import relaybox

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "console-test-token-7f3a"
# A transport that refuses every publish: nothing listens on port 1.
REFUSING = {"redis": {"url": "redis://127.0.0.1:1"}}


def console_command() -> list[str]:
    """``RELAYBOX_CONSOLE_BIN``, else the ``relaybox`` command of this environment."""
    override = os.environ.get("RELAYBOX_CONSOLE_BIN", "").strip()
    if override:
        return [override]
    found = shutil.which("relaybox", path=str(Path(sys.executable).parent))
    assert found, "the relaybox command is not installed next to this Python"
    return [found]


class ConsoleProcess:
    """A ``relaybox console`` process on an address the system picks."""

    def __init__(self, tmp: Path, pg_url: str, prefix: str, token: Optional[str]) -> None:
        self.log = tmp / f"console-{prefix}-{token is not None}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
        if token is not None:
            env["RELAYBOX_CONSOLE_TOKEN"] = token
        self.proc = subprocess.Popen(
            [
                *console_command(),
                "console",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                pg_url,
                "--table-prefix",
                prefix,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            env=env,
        )
        found = wait_for("the console's address", self._address, timeout=20)
        assert found is not None
        self.url: str = found

    def _address(self) -> Optional[str]:
        if self.proc.poll() is not None:
            pytest.fail(f"relaybox console exited with {self.proc.returncode}: {self.output()}")
        match = re.search(r"serving (http://\S+/)", self.output())
        return match.group(1) if match else None

    def output(self) -> str:
        """What the console printed on stderr."""
        return self.log.read_text()

    def stop(self) -> None:
        """SIGTERM; the console must exit 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"relaybox console did not exit on SIGTERM: {self.output()}")
        assert status == 0, self.output()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium from Debian, driven through its chromedriver."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: apt-get install chromium chromium-driver")
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def consoles(tmp_path: Path) -> Iterator[list[ConsoleProcess]]:
    """The console processes a test starts; each is stopped (and must exit 0) afterwards."""
    started: list[ConsoleProcess] = []
    yield started
    for console in started:
        console.stop()


def screenshot(driver: webdriver.Chrome, name: str, section: Optional[str] = None) -> None:
    """Saves the window as ``console-NAME.png`` when RELAYBOX_CONSOLE_SCREENSHOTS is set,
    scrolled to the element of id ``section`` if given."""
    folder = os.environ.get("RELAYBOX_CONSOLE_SCREENSHOTS", "").strip()
    if not folder:
        return
    if section is not None:
        driver.execute_script(
            "arguments[0].scrollIntoView({block: 'start'})", driver.find_element(By.ID, section)
        )
    Path(folder).mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(Path(folder) / f"console-{name}.png"))


def texts(driver: webdriver.Chrome, css: str) -> list[str]:
    """The text of every element matching ``css``, read in one step (the page
    replaces its tables as it refreshes)."""
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", css
    )
    return found


def rows(driver: webdriver.Chrome) -> list[str]:
    """The message ids of the dead-letter rows on the page."""
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#dead-letters tbody tr')].map(r => r.dataset.id)"
    )
    return found


def parked_keys(driver: webdriver.Chrome) -> list[str]:
    """The keys of the parked-key rows on the page, in page order."""
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#parked tbody tr')].map(r => r.dataset.key)"
    )
    return found


def select(driver: webdriver.Chrome, message_id: str) -> None:
    """Ticks the checkbox of a dead letter's row."""
    box = driver.find_element(By.CSS_SELECTOR, f'tr[data-id="{message_id}"] input.select')
    if not box.is_selected():
        box.click()


def confirm_dialog(driver: webdriver.Chrome) -> WebElement:
    """The confirmation dialog, once it is open."""
    dialog = wait_for(
        "the confirmation dialog",
        lambda: next(
            (d for d in driver.find_elements(By.ID, "confirm") if d.get_attribute("open")), None
        ),
        timeout=5,
    )
    assert dialog is not None
    return dialog


def notice(driver: webdriver.Chrome, says: str) -> str:
    """Waits for the page's notice to contain ``says``; its text."""
    text = wait_for(
        f"a notice saying {says!r}",
        lambda: next((t for t in texts(driver, "#notice") if says in t), None),
        timeout=10,
    )
    assert text is not None
    return text


def dead_letter_ids(pg: psycopg.Connection[Any], prefix: str) -> set[str]:
    """The message ids in the dead-letter table."""
    return {str(r[0]) for r in pg.execute(f'SELECT id FROM "{prefix}dead_letters"').fetchall()}


def post(url: str, body: dict[str, Any], token: Optional[str] = None) -> tuple[int, Any]:
    """A POST with a JSON body; the status and the JSON answer."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_page_shows_what_the_database_holds(
    outbox: relaybox.Outbox,
    pg: psycopg.Connection[Any],
    pg_url: str,
    prefix: str,
    browser: webdriver.Chrome,
    consoles: list[ConsoleProcess],
    tmp_path: Path,
) -> None:
    for n in range(7):
        outbox.enqueue("orders", {"order": n}, key=f"customer-{n % 3}")
    for n in range(4):
        outbox.enqueue("invoices", {"invoice": n})
    console = ConsoleProcess(tmp_path, pg_url, prefix, TOKEN)
    consoles.append(console)
    browser.get(console.url)

    def pending_in_database() -> dict[str, str]:
        return {
            topic: str(n)
            for topic, n in pg.execute(
                f'SELECT topic, count(*) FROM "{prefix}outbox" WHERE sent_at IS NULL GROUP BY topic'
            ).fetchall()
        }

    def backlog_on_page() -> dict[str, str]:
        found: dict[str, str] = browser.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('#backlog tbody tr')]"
            ".map(r => [r.dataset.topic, r.querySelector('td.pending').textContent]))"
        )
        return found

    assert pending_in_database() == {"orders": "7", "invoices": "4"}
    wait_for(
        "the backlog of both topics on the page",
        lambda: backlog_on_page() == pending_in_database(),
        timeout=10,
    )
    assert texts(browser, "#total-pending, #dead-letter-count") == ["11", "0"]
    partitions = pg.execute(f'SELECT count(*) FROM "{prefix}leases"').fetchone()
    assert partitions is not None
    assert texts(browser, "#partitions") == [str(partitions[0])]

    # A relay for orders only (invoices stay pending, unrouted) and a consumer
    # group on the database transport that stops after the first seven.
    def handle(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        pass

    with relaybox.Relay(
        outbox, [relaybox.Route(["orders"])], poll_interval=0.05, instance_id="relay-orders-1"
    ):
        with relaybox.Consumer(outbox, "orders", handle, group="billing") as consumer:
            wait_for("7 processed", lambda: consumer.stats()["processed"] == 7)
        for n in range(5):
            outbox.enqueue("orders", {"order": 7 + n}, key=f"customer-{n % 3}")
        wait_for(
            "12 orders in the log",
            lambda: (
                pg.execute(
                    f'SELECT count(*) FROM "{prefix}log" WHERE topic = %s', ("orders",)
                ).fetchone()
                == (12,)
            ),
        )
        row = pg.execute(
            f'SELECT p.position, (SELECT count(*) FROM "{prefix}log" l '
            "WHERE l.topic = 'orders' AND l.position > p.position) "
            f'FROM "{prefix}positions" p WHERE p.consumer_group = %s',
            ("billing",),
        ).fetchone()
        assert row is not None and row[1] == 5, row

        def consumer_on_page() -> Optional[tuple[str, str]]:
            cells = texts(browser, 'tr[data-group="billing"] td')
            return (cells[3], cells[5]) if cells else None

        wait_for(
            "the consumer group's position and lag on the page",
            lambda: consumer_on_page() == (str(row[0]), "5"),
            timeout=10,
        )
        wait_for(
            "the relay and its leases on the page",
            lambda: "relay-orders-1" in texts(browser, "#leases td.owner"),
            timeout=10,
        )
        wait_for(
            "the backlog without orders on the page",
            lambda: backlog_on_page() == pending_in_database() == {"invoices": "4"},
            timeout=10,
        )
        assert texts(browser, '#backlog tr[data-topic="invoices"] td.served') == ["unrouted"]
        wait_for(
            "the chart",
            lambda: browser.find_elements(By.CSS_SELECTOR, "#chart canvas"),
            timeout=15,
        )
        # Nothing on the page gives the database away.
        source = browser.page_source
        assert pg_url not in source and "postgres://" not in source
        screenshot(browser, "overview")


def test_dead_letters_are_filtered_shown_retried_and_purged(
    outbox: relaybox.Outbox,
    pg: psycopg.Connection[Any],
    pg_url: str,
    prefix: str,
    browser: webdriver.Chrome,
    consoles: list[ConsoleProcess],
    tmp_path: Path,
) -> None:
    ids = [
        outbox.enqueue(
            "payments",
            {"payment": n, "amount": 10 * n},
            key=f"account-{n}",
            type="PaymentCaptured",
            headers={"tenant": "acme"},
        )
        for n in range(3)
    ]
    # Real dead letters: a relay whose transport refuses, giving up after one attempt.
    with relaybox.Relay(outbox, REFUSING, max_attempts=1, publish_timeout=1.0, poll_interval=0.05):
        wait_for("3 dead letters", lambda: dead_letter_ids(pg, prefix) == set(ids), timeout=20)
    first, second, third = ids

    console = ConsoleProcess(tmp_path, pg_url, prefix, TOKEN)
    consoles.append(console)
    browser.get(console.url)
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait_for("the dead letters on the page", lambda: sorted(rows(browser)) == sorted(ids), 10)
    # The relay's dead letters park their keys.
    accounts = [f"account-{n}" for n in range(3)]
    wait_for("the parked keys", lambda: sorted(parked_keys(browser)) == accounts, 10)
    assert browser.find_element(By.ID, "parked-key-count").text == "3"
    screenshot(browser, "parked", section="parked-section")

    # Filters: by key, by error text (any case), by time.
    error_row = pg.execute(
        f'SELECT last_error FROM "{prefix}dead_letters" WHERE id = %s', (first,)
    ).fetchone()
    assert error_row is not None
    words = re.findall(r"[A-Za-z]{4,}", str(error_row[0]))
    assert words, error_row
    with_word = {
        str(r[0])
        for r in pg.execute(
            f'SELECT id FROM "{prefix}dead_letters" WHERE strpos(lower(last_error), lower(%s)) > 0',
            (words[0],),
        ).fetchall()
    }
    assert first in with_word

    def apply(**fields: str) -> None:
        for name in ("topic", "key", "error", "after", "before"):
            element = browser.find_element(By.ID, f"filter-{name}")
            browser.execute_script(
                "arguments[0].value = arguments[1]", element, fields.get(name, "")
            )
        browser.find_element(By.ID, "filter-apply").click()

    apply(key="account-1")
    wait_for("only account-1's dead letter", lambda: rows(browser) == [second], 10)
    apply(error=words[0].upper(), topic="payments")
    wait_for("the dead letters by error text", lambda: set(rows(browser)) == with_word, 10)
    apply(error="no such error text")
    wait_for("no dead letter", lambda: rows(browser) == [], 10)
    apply(before="2001-01-01T00:00:00")
    wait_for("no dead letter before 2001", lambda: rows(browser) == [], 10)
    apply(after="2001-01-01T00:00:00")
    wait_for("every dead letter after 2001", lambda: sorted(rows(browser)) == sorted(ids), 10)
    screenshot(browser, "dead-letters", section="dead-letters-section")

    # The payload and headers of one.
    browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{first}"] button.view').click()
    payload = wait_for("the payload", lambda: browser.find_element(By.ID, "detail-payload").text, 5)
    assert json.loads(payload) == {"payment": 0, "amount": 0}
    assert browser.find_element(By.ID, "detail-id").text == first
    assert json.loads(browser.find_element(By.ID, "detail-headers").text)["tenant"] == "acme"
    screenshot(browser, "detail")
    browser.find_element(By.ID, "detail-close").click()

    # Without the token a change is refused, on the page and over plain HTTP.
    select(browser, first)
    browser.find_element(By.ID, "dl-retry").click()
    confirm_dialog(browser).find_element(By.ID, "confirm-ok").click()
    refusal = notice(browser, "Refused (401)")
    assert "token" in refusal
    screenshot(browser, "refused", section="dead-letters-section")
    status, answer = post(console.url + "api/dead-letters/retry", {"ids": [first]})
    assert (status, answer["error"]) == (401, "missing_token")
    status, answer = post(console.url + "api/dead-letters/purge", {"ids": [first]}, "wrong")
    assert (status, answer["error"]) == (401, "wrong_token")
    assert dead_letter_ids(pg, prefix) == set(ids)

    # With the token: retry one; a relay that succeeds delivers it.
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "token-save").click()
    select(browser, first)
    browser.find_element(By.ID, "dl-retry").click()
    confirm_dialog(browser).find_element(By.ID, "confirm-ok").click()
    notice(browser, "Retried 1")
    assert dead_letter_ids(pg, prefix) == {second, third}
    wait_for("the retried row gone from the page", lambda: first not in rows(browser), 10)
    wait_for("its key no longer parked", lambda: sorted(parked_keys(browser)) == accounts[1:], 10)
    with relaybox.Relay(outbox, poll_interval=0.05):
        wait_for(
            "the retried message in the log",
            lambda: (
                pg.execute(f'SELECT count(*) FROM "{prefix}log" WHERE id = %s', (first,)).fetchone()
                == (1,)
            ),
        )
    assert outbox.pending_count() == 0

    # Purging two asks first: cancelled, nothing goes; confirmed, both go.
    select(browser, second)
    select(browser, third)
    browser.find_element(By.ID, "dl-purge").click()
    dialog = confirm_dialog(browser)
    assert "Purge 2 dead letters for good" in dialog.text
    screenshot(browser, "confirm")
    dialog.find_element(By.ID, "confirm-cancel").click()
    notice(browser, "Nothing purged")
    assert dead_letter_ids(pg, prefix) == {second, third}
    assert sorted(rows(browser)) == sorted([second, third])
    browser.find_element(By.ID, "dl-purge").click()
    confirm_dialog(browser).find_element(By.ID, "confirm-ok").click()
    notice(browser, "Purged 2")
    assert dead_letter_ids(pg, prefix) == set()
    wait_for("no dead-letter row", lambda: rows(browser) == [], 10)
    wait_for("no parked key", lambda: parked_keys(browser) == [], 10)
    assert browser.find_element(By.ID, "parked-empty").is_displayed()


def test_without_a_token_the_console_is_read_only(
    outbox: relaybox.Outbox,
    pg_url: str,
    prefix: str,
    browser: webdriver.Chrome,
    consoles: list[ConsoleProcess],
    tmp_path: Path,
) -> None:
    console = ConsoleProcess(tmp_path, pg_url, prefix, None)
    consoles.append(console)
    browser.get(console.url)
    banner = wait_for(
        "the read-only banner",
        lambda: next((t for t in texts(browser, "#changes-banner") if "Read-only" in t), None),
        timeout=10,
    )
    assert banner is not None and "RELAYBOX_CONSOLE_TOKEN is not set" in banner
    assert not browser.find_element(By.ID, "token-form").is_displayed()
    status, answer = post(
        console.url + "api/dead-letters/purge",
        {"ids": ["0190a4b2-0000-7000-8000-000000000000"]},
        TOKEN,
    )
    assert (status, answer["error"]) == (403, "no_token_configured")
    # A name that is not this machine's (DNS rebinding) gets nothing from a loopback console.
    request = urllib.request.Request(
        console.url + "api/overview", headers={"Host": "rebound.example"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert json.loads(refused.value.read())["error"] == "host_not_allowed"


def test_a_relay_serves_the_console_under_console(
    outbox: relaybox.Outbox, pg_url: str, prefix: str, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    log = tmp_path / "relay.log"
    relay = subprocess.Popen(
        [
            *console_command(),
            "relay",
            "--database-url",
            pg_url,
            "--table-prefix",
            prefix,
            "--listen",
            f"127.0.0.1:{port}",
            "--console",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env=env,
    )
    base = f"http://127.0.0.1:{port}/console/"

    def overview() -> Optional[dict[str, Any]]:
        if relay.poll() is not None:
            pytest.fail(f"relaybox relay exited with {relay.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(base + "api/overview", timeout=5) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer if answer["status"]["live_relays"] == 1 else None
        except OSError:
            return None

    try:
        answer = wait_for("the relay's console", overview, timeout=20)
        assert answer is not None
        assert answer["changes"] == "no_token"
        assert answer["table_prefix"] == prefix
        with urllib.request.urlopen(base, timeout=5) as response:
            assert '<base href="/console/">' in response.read().decode()
        status, refusal = post(
            base + "api/dead-letters/retry", {"ids": ["0190a4b2-0000-7000-8000-000000000000"]}
        )
        assert (status, refusal["error"]) == (403, "no_token_configured")
    finally:
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=15) == 0, log.read_text()
