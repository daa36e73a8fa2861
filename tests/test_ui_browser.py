"""The status page in a real headless browser: Debian's chromium driven through chromedriver by Selenium.

Nothing is downloaded at run time: the test uses the system's ``chromium`` and
``chromedriver`` (``apt-get install chromium chromium-driver``; .ci/run does)
and skips, saying so, when either is missing. With ``CCPROXY_UI_SCREENSHOT=path``
it also saves a screenshot of the page (docs/ui-status.png is made this way).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port, wait_for_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or next((p for p in ("/usr/lib/chromium/chromedriver",) if os.path.exists(p)), None)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
if not CHROMIUM or not CHROMEDRIVER:
    pytest.skip("no system chromium and chromedriver: apt-get install chromium chromium-driver", allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

ADMIN_KEY = "sk-ccproxy-browser-admin-0001"
KEYS = f"""
[[keys]]
name = "user"
key = "sk-ccproxy-browser-user-0001"

[[keys]]
name = "admin"
key = "{ADMIN_KEY}"
role = "admin"
"""

CONFIG = """\
# the browser test's config
{keys}
[server]
listen = "127.0.0.1:{port}"
state_dir = "{state_dir}"

[providers.demo]
protocol = "demo"

[providers.busy]   # always answers 429 with Retry-After: 120
protocol = "openai"
base_url = "http://127.0.0.1:{busy_port}/v1"

[groups.default.models]
"demo" = ["demo/demo-1"]
"flaky" = {{ targets = ["busy/m", "demo/demo-1"], strategy = "priority" }}

[groups.work.models]
"demo" = ["demo/demo-2"]
"only-work" = ["demo/demo-3"]
"""


class RateLimited(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"error": {"message": "slow down", "type": "rate_limit"}}).encode()
        self.send_response(429)
        self.send_header("content-type", "application/json")
        self.send_header("retry-after", "120")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def busy_upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), RateLimited)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(params=["loopback", "admin-key"])
def daemon(request, tmp_path, busy_upstream):
    """Without keys (loopback may) and with keys (the page opened as /ui?key=ADMIN_KEY)."""
    port = free_port()
    path = tmp_path / "ccproxy.toml"
    keys = KEYS if request.param == "admin-key" else ""
    path.write_text(CONFIG.format(keys=keys, port=port, state_dir=tmp_path / "state", busy_port=busy_upstream))
    proc = subprocess.Popen([sys.executable, "-m", "ccproxyd", "--config", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_port(port, proc)
    yield f"http://127.0.0.1:{port}", path, {"authorization": f"Bearer {ADMIN_KEY}"} if keys else {}
    proc.terminate()
    proc.wait(timeout=30)
    proc.stderr.close()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1500",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for a driver online
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def chat(url: str, model: str, headers: dict) -> str:
    r = requests.post(url + "/v1/chat/completions", headers=headers, json={"model": model, "messages": [{"role": "user", "content": "Hello"}]})
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


def wait(driver, check, timeout: float = 20):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: check(d))


def test_status_page_in_a_real_browser(daemon, browser):
    url, config_path, auth = daemon
    request_id = chat(url, "demo", auth)
    chat(url, "flaky", auth)  # busy/m answers 429: a failover, and a cooldown of 120 s
    # the stats writer flushes once a second: the chart has data once the API has it
    for_chart = lambda _: requests.get(url + "/admin/usage", params={"window": "hour"}, headers=auth).json()["series"]  # noqa: E731
    wait(None, for_chart)

    if auth:
        browser.get(url + "/ui?key=" + ADMIN_KEY)
    else:
        browser.get(url + "/")  # a browser asking for / lands on the page
        assert browser.current_url == url + "/ui"
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#recent tr[data-request-id="{request_id}"]'))
    row = browser.find_element(By.CSS_SELECTOR, f'#recent tr[data-request-id="{request_id}"]').text
    assert "demo → demo/demo-1" in row and "200" in row

    busy = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#targets tr[data-target="busy/m"]'))[0]
    assert busy.find_element(By.CSS_SELECTOR, ".pill").text == "cooling"
    assert "s left (rate_limit" in busy.find_element(By.CSS_SELECTOR, ".cooldown").text
    assert busy.find_elements(By.TAG_NAME, "td")[6].text == "1"  # one failover

    wait(browser, lambda d: int(d.find_element(By.ID, "usage-chart").get_attribute("data-points")) > 0)
    painted = browser.execute_script("""
        const canvas = document.querySelector('#usage-chart canvas');
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let colored = 0;
        for (let i = 0; i < pixels.length; i += 4) {  // saturated pixels: series lines and fills, not the gray axes
          const [r, g, b, a] = pixels.slice(i, i + 4);
          if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 60) colored++;
        }
        return colored;""")
    assert painted > 50, "the usage chart drew no series line"
    assert "demo" in browser.find_element(By.ID, "usage-chart").get_attribute("data-series").split(",")

    assert browser.find_element(By.ID, "active-group").text == "default"
    if os.environ.get("CCPROXY_UI_SCREENSHOT"):
        browser.save_screenshot(os.environ["CCPROXY_UI_SCREENSHOT"])
    Select(browser.find_element(By.ID, "group-select")).select_by_value("work")
    browser.find_element(By.ID, "switch-group").click()
    wait(browser, lambda d: d.find_element(By.ID, "active-group").text == "work")
    assert "saved to" in browser.find_element(By.ID, "switch-result").text
    models = {m["id"] for m in requests.get(url + "/switch/v1/models", headers=auth).json()["data"]}
    assert models == {"demo", "only-work"}
    text = Path(config_path).read_text()
    assert 'active_group = "work"' in text and "# the browser test's config" in text

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
