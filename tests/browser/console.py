"""Drives the Heimdall console in headless Chromium, as a user would, and prints what
it saw as JSON. Any step that does not happen in time fails with its name.

Arguments: a scenario, the base URL, the directory for screenshots, then the
scenario's own:
- `tour <write token> <read token>`: Explore, context, facets, patterns, fleet,
  silences, every page, and the read-only view.
- `incident <write token> <incident URL>`: opens an incident from a notification's
  link, reads it, acknowledges it; then the fleet and storage pages."""

import json
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

scenario, base, shots = sys.argv[1:4]
os.makedirs(shots, exist_ok=True)
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,900"]:
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
d = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
seen = {}


def wait(what, cond, timeout=15):
    try:
        # Pages re-render: an element found a moment ago may be gone; look again.
        return WebDriverWait(d, timeout, ignored_exceptions=(WebDriverException,)).until(
            lambda _: cond()
        )
    except Exception:
        d.save_screenshot(os.path.join(shots, "failed.png"))
        errors = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".error")]
        raise SystemExit(f"step failed: {what} (page {d.current_url}, errors {errors})")


def rows():
    return d.find_elements(By.CSS_SELECTOR, "#lines .row")


def shot(name):
    d.save_screenshot(os.path.join(shots, f"{name}.png"))


def sign_in(tok):
    d.execute_script("localStorage.clear()")
    d.get(base + "/explore")
    box = wait("the sign-in form", lambda: d.find_element(By.ID, "tok"))
    box.send_keys(tok)
    box.send_keys(Keys.ENTER)


def tour(write_tok, read_tok):
    d.get(base + "/")
    sign_in(write_tok)
    wait("lines of the default query", lambda: len(rows()) > 0)
    wait("the histogram legend", lambda: d.find_elements(By.CSS_SELECTOR, "#legend .lv"))
    seen["who"] = d.find_element(By.ID, "who").text
    shot("explore")

    q = d.find_element(By.ID, "q")
    q.clear()
    q.send_keys('{service_name="shop"}')
    q.send_keys(Keys.CONTROL, Keys.ENTER)
    wait("the query in the URL", lambda: "shop" in d.current_url)
    wait("lines of the shop", lambda: len(rows()) > 0 and "shop" in d.find_element(By.ID, "status").text + "shop")
    seen["status"] = d.find_element(By.ID, "status").text
    seen["rows_in_view"] = len(rows())

    rows()[0].click()
    wait("the line's details", lambda: "Labels" in d.find_element(By.ID, "detail").text)
    seen["template"] = wait("the line's template", lambda: "<_>" in d.find_element(By.ID, "tpl").text and d.find_element(By.ID, "tpl").text)
    d.find_element(By.ID, "ctx").click()
    wait("the context lines", lambda: len(d.find_elements(By.CSS_SELECTOR, "#ctxlines .kv div")) > 1)
    seen["context_lines"] = len(d.find_elements(By.CSS_SELECTOR, "#ctxlines .kv div"))
    shot("explore-context")

    # 100,000 lines stay smooth: only the rows in view are in the document.
    d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('/console/app.js').then(m => {
            const rows = Array.from({ length: 100000 }, (_, i) => ({
                ts: String(1800000000000000000 - i), line: `synthetic line ${i}`, stream: {}, meta: {}, parsed: {} }));
            m.showLines(rows);
            const box = document.getElementById('lines');
            box.scrollTop = 50000 * 20;
            box.dispatchEvent(new Event('scroll'));
            done();
        });
    """)
    wait("line 50,000 on screen", lambda: d.find_elements(By.CSS_SELECTOR, '#lines .row[data-i="50000"]'))
    seen["rows_in_document_of_100000"] = len(rows())
    seen["line_50000"] = d.find_element(By.CSS_SELECTOR, '#lines .row[data-i="50000"]').text
    shot("explore-100k")
    d.find_element(By.ID, "q").send_keys(Keys.CONTROL, Keys.ENTER)
    wait("the query's lines again", lambda: not d.find_elements(By.CSS_SELECTOR, '#lines .row[data-i="50000"]') and len(rows()) > 0)

    chip = wait("a facet", lambda: d.find_element(By.CSS_SELECTOR, '.chip[data-facet="detected_level"]'))
    chip.click()
    wait("the facet's filter", lambda: "detected_level=" in d.find_element(By.ID, "q").get_attribute("value"))
    wait("lines after the facet", lambda: len(rows()) > 0)
    seen["facet_query"] = d.find_element(By.ID, "q").get_attribute("value")
    shot("explore-facet")

    d.get(base + "/patterns?service=shop&since=1h")
    link = wait("a pattern", lambda: d.find_element(By.CSS_SELECTOR, "#pats a"))
    seen["pattern"] = link.text
    shot("patterns")
    link.click()
    wait("Explore filtered to the pattern", lambda: "|>" in d.find_element(By.ID, "q").get_attribute("value"))
    wait("the pattern's lines", lambda: len(rows()) > 0)
    seen["pattern_rows"] = len(rows())
    shot("explore-pattern")

    d.get(base + "/fleet")
    wait("the fleet table", lambda: len(d.find_elements(By.CSS_SELECTOR, "table.grid tr")) > 1)
    seen["fleet_rows"] = len(d.find_elements(By.CSS_SELECTOR, "table.grid tr")) - 1
    seen["fleet_text"] = d.find_element(By.TAG_NAME, "main").text
    shot("fleet")

    d.get(base + "/alerts")
    m = wait("the silence form", lambda: d.find_element(By.ID, "m"))
    m.send_keys('{alertname="DiskFull"}')
    d.find_element(By.ID, "c").send_keys("console test")
    d.find_element(By.CSS_SELECTOR, "#silence button").click()
    wait("the new silence", lambda: "DiskFull" in d.find_element(By.ID, "sils").text)
    shot("alerts")

    d.get(base + "/anomalies?since=1h")
    row = wait("an anomaly", lambda: d.find_element(By.CSS_SELECTOR, "#anoms tr.click"))
    seen["anomaly_rows"] = len(d.find_elements(By.CSS_SELECTOR, "#anoms tr.click"))
    shot("anomalies")
    row.click()
    wait("the anomaly's series", lambda: "baseline" in d.find_element(By.ID, "aseries-legend").text or "templates" in d.find_element(By.ID, "aseries-legend").text)
    seen["anomaly_legend"] = d.find_element(By.ID, "aseries-legend").text
    seen["anomaly_series_max"] = float(d.find_element(By.ID, "aseries").get_attribute("data-max") or 0)
    wait("the event in the URL", lambda: "event=" in d.current_url)
    shot("anomaly")

    for page in ["incidents", "storage"]:
        d.get(f"{base}/{page}")
        wait(f"the {page} page", lambda: d.find_elements(By.CSS_SELECTOR, "main section"))
        shot(page)

    # Read-only: no write action is offered.
    sign_in(read_tok)
    wait("lines as the read-only user", lambda: len(rows()) > 0)
    d.get(base + "/alerts")
    wait("the alerts page", lambda: d.find_elements(By.ID, "sils"))
    seen["readonly_forms"] = len(d.find_elements(By.ID, "silence"))
    seen["readonly_expire_buttons"] = len(d.find_elements(By.CSS_SELECTOR, "#sils button"))
    seen["readonly_who"] = d.find_element(By.ID, "who").text
    shot("alerts-readonly")
    d.find_element(By.TAG_NAME, "body").send_keys("t")
    seen["theme_after_t"] = d.execute_script("return document.documentElement.dataset.theme")
    seen["console_errors"] = [l["message"] for l in d.get_log("browser") if l["level"] == "SEVERE"]


def incident(write_tok, url):
    d.get(base + "/")
    sign_in(write_tok)
    wait("lines after signing in", lambda: len(rows()) > 0)
    # The link from the notification, as the SRE would follow it.
    d.get(url)
    title = wait("the incident", lambda: d.find_element(By.CSS_SELECTOR, "main h2"))
    seen["title"] = title.text
    seen["first_candidate"] = wait(
        "the root-cause candidates", lambda: d.find_element(By.CSS_SELECTOR, "#candidates > div")
    ).text
    seen["timeline"] = d.find_element(By.ID, "timeline").text
    seen["samples"] = d.find_element(By.ID, "samples").text
    seen["alerts"] = d.find_element(By.ID, "incident-alerts").text
    shot("incident")
    d.find_element(By.ID, "ack").click()
    wait("the acknowledgement", lambda: "acked by" in d.find_element(By.CSS_SELECTOR, "main").text)
    seen["after_ack"] = d.find_element(By.CSS_SELECTOR, "main p.muted").text
    shot("incident-acked")

    # The dead host's connection times out (QUIC idle timeout); the page shows it once
    # reloaded.
    def dead_first():
        d.get(base + "/fleet")
        wait("the fleet table", lambda: len(d.find_elements(By.CSS_SELECTOR, "table.grid tr")) > 1)
        return "disconnected" in d.find_elements(By.CSS_SELECTOR, "table.grid tr")[1].text

    wait("the dead host first in the fleet", dead_first, timeout=30)
    trs = d.find_elements(By.CSS_SELECTOR, "table.grid tr")
    seen["fleet_rows"] = len(trs) - 1
    seen["fleet_first"] = trs[1].text
    shot("fleet-outage")

    d.get(base + "/storage")
    seen["storage_tiers"] = wait("the storage tiers", lambda: d.find_element(By.ID, "tiers")).text
    shot("storage-outage")
    seen["console_errors"] = [l["message"] for l in d.get_log("browser") if l["level"] == "SEVERE"]


try:
    {"tour": tour, "incident": incident}[scenario](*sys.argv[4:])
finally:
    d.quit()
print(json.dumps(seen))
