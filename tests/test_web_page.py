"""GET / in a real headless browser (Debian's chromium + chromedriver, driven by Selenium):
upload a photo, read the rendered bars, and a clear message for a bad file; artifact text shown
as text, never run as markup; the security headers of the page and the API.

The page keeps its script and style in one inline <script> and one inline <style> block, with no
event-handler or style attributes: the ingress allows exactly those blocks by their sha256 in
its Content-Security-Policy, so anything else on the page would not run.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests import images
from tests.artifacts import CELEBA_LABELS
from tests.harness import ROOT, wait_for
from tests.required import require

SCREENSHOTS = ROOT / "test-output"
PAGE = ROOT / "serve_app" / "static" / "index.html"
TITLE = "Face attributes"
# Artifact-controlled text that would run as script if the page wrote it as HTML.
PAYLOADS = {
    field: f"<img src=x onerror=\"document.title='pwned by {field}'\">"
    for field in ("name", "version", "backbone")
}


class PageScan(HTMLParser):
    """Every tag with its attributes, and the text of each inline <script> / <style> block."""

    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.blocks: dict[str, list[str]] = {"script": [], "style": []}
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in self.blocks:
            self._open = tag
            self.blocks[tag].append("")

    def handle_endtag(self, tag):
        if tag == self._open:
            self._open = None

    def handle_data(self, data):
        if self._open:
            self.blocks[self._open][-1] += data


def scan_page() -> PageScan:
    scan = PageScan()
    scan.feed(PAGE.read_text(encoding="utf-8"))
    scan.close()
    return scan


def csp_hash(block: str) -> str:
    """The CSP source expression that allows this inline block: 'sha256-<base64 digest>'."""
    digest = hashlib.sha256(block.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def csp_directives(header: str) -> dict[str, list[str]]:
    """ "default-src 'none'; img-src 'self' data:" -> {"default-src": ["'none'"], ...}."""
    directives = {}
    for part in header.split(";"):
        if part.strip():
            name, *sources = part.split()
            directives[name.lower()] = sources
    return directives


# ---- the page's source: what its Content-Security-Policy can allow ---------------------------


def test_page_has_one_inline_script_and_style_and_no_attributes_csp_would_block():
    scan = scan_page()
    assert len(scan.blocks["script"]) == 1 and len(scan.blocks["style"]) == 1, scan.blocks.keys()
    for tag, attrs in scan.tags:
        handlers = [a for a in attrs if a.startswith("on")]
        assert not handlers, f"<{tag}> has inline handlers {handlers}: use addEventListener"
        assert "style" not in attrs, f"<{tag} style=...>: move it to the <style> block"
        external = {a: v for a, v in attrs.items() if a in ("src", "href", "action") and v}
        assert not external, f"<{tag}> loads {external}: the page has no external resources"
        if tag in ("script", "style"):
            assert not attrs, f"<{tag} {attrs}>: keep blocks inline and attribute-free"


def test_page_script_never_writes_html():
    """Text from the model artifact (name, version, backbone) or the server (error details)
    lands in text nodes: the script has no way to parse a string as HTML."""
    script = scan_page().blocks["script"][0]
    sinks = re.findall(
        r"\b(innerHTML|outerHTML|insertAdjacentHTML|document\.write|createContextualFragment"
        r"|DOMParser|setHTML)\b",
        script,
    )
    assert not sinks, f"the page's script uses HTML sinks {sorted(set(sinks))}: use textContent"


def find_browser() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def missing_browser() -> str | None:
    if find_browser() is None:
        return (
            "chromium and chromedriver not found on PATH "
            "(apt-get install chromium chromium-driver; .ci/run installs them)"
        )
    return None


def test_missing_browser_names_the_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no chromium on it
    assert "apt-get install chromium chromium-driver" in missing_browser()


@pytest.fixture(scope="module")
def browser():
    require("browser", missing_browser())
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-quic", "--window-size=1200,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    # The console log is where Chromium reports Content-Security-Policy violations.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    yield driver
    driver.quit()


def upload(browser, served, path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(served.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(path))


def csp_violations(browser) -> list[str]:
    """Console messages since the last call in which Chromium refused something under CSP."""
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]


def wait_for_result(browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(
        lambda b: b.find_element(By.ID, "status").get_attribute("data-latency-ms")
    )


def write_payload_artifact(store: Path) -> Path:
    """A copy of the tiny test model whose name, version and backbone are PAYLOADS; returns
    its version directory. write_tiny_artifact fixes the backbone, so the copy is saved again
    through model_store.save_artifact (which fills in name, version and checksums)."""
    from model_store import save_artifact
    from tests.artifacts import write_tiny_artifact

    tiny = write_tiny_artifact(str(store / "payload-scratch"), version="v1")
    metadata = tiny.metadata.model_dump(exclude={"name", "version", "sha256", "created_at"})
    metadata["backbone"] = PAYLOADS["backbone"]
    if not (store / PAYLOADS["name"] / PAYLOADS["version"]).exists():
        save_artifact(
            str(store), PAYLOADS["name"], tiny.model_bytes, metadata, version=PAYLOADS["version"]
        )
    return store / PAYLOADS["name"] / PAYLOADS["version"]


@pytest.mark.serve
def test_upload_shows_sorted_bars_threshold_version_latency(browser, served, tmp_path):
    from selenium.webdriver.common.by import By

    photo = tmp_path / "red.jpg"
    photo.write_bytes(images.solid(images.RED))
    csp_violations(browser)  # drop earlier pages' messages
    upload(browser, served, photo)
    wait_for_result(browser)

    names = [
        e.get_attribute("data-label")
        for e in browser.find_elements(By.CSS_SELECTOR, "#results .name")
    ]
    assert len(names) == 40 and set(names) == set(CELEBA_LABELS)
    assert names[0] == CELEBA_LABELS[0]  # the most probable first
    assert browser.find_elements(By.CSS_SELECTOR, "#results .name.on")  # above the threshold
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results .threshold")) == 40
    assert browser.find_element(By.ID, "model-version").text == "v1"
    assert float(browser.find_element(By.ID, "status").get_attribute("data-latency-ms")) > 0
    meta = browser.find_element(By.ID, "meta").text
    assert meta == "Model face-attributes version v1 · tiny-test-net · input 64\u00d764", meta
    assert csp_violations(browser) == []
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "web-page.png"))


@pytest.mark.serve
def test_bad_file_shows_a_clear_message(browser, served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    upload(browser, served, bad)
    status = WebDriverWait(browser, 30).until(
        lambda b: b.find_element(By.CSS_SELECTOR, "#status.error")
    )
    assert "Could not classify this file" in status.text and "decod" in status.text


@pytest.mark.serve
def test_artifact_text_is_shown_as_text_never_run(browser, served, model_store, tmp_path):
    """An artifact whose name, version and backbone are HTML: the page shows them literally,
    no element is injected, and the payload's script does not run (the title stays)."""
    from selenium.webdriver.common.by import By

    from tests.harness import deployment

    config = served.base_config()
    model = deployment(config["applications"][0], "FaceAttributeModel")
    model["user_config"]["model_uri"] = str(write_payload_artifact(model_store))
    served.deploy(config)
    try:
        assert served.metadata()["backbone"] == PAYLOADS["backbone"]
        photo = tmp_path / "red.png"
        photo.write_bytes(images.solid(images.RED, fmt="PNG"))
        csp_violations(browser)  # drop earlier pages' messages
        upload(browser, served, photo)
        wait_for_result(browser)  # the page has rendered metadata and a result by now

        meta = browser.find_element(By.ID, "meta")
        for field, payload in PAYLOADS.items():
            assert payload in meta.text, (field, meta.text)
        injected = [e.tag_name for e in meta.find_elements(By.CSS_SELECTOR, "*")]
        assert injected == ["b", "b"], f"#meta holds elements {injected}"
        assert browser.find_element(By.ID, "model-version").text == PAYLOADS["version"]
        assert len(browser.find_elements(By.TAG_NAME, "img")) == 1  # only #preview
        assert browser.title == TITLE
        assert csp_violations(browser) == []
    finally:
        served.deploy(served.base_config())


# ---- security headers of the page and of the API ----------------------------------------------


@pytest.mark.serve
def test_page_csp_allows_exactly_its_inline_blocks(served):
    page = served.http.get("/")
    assert page.status_code == 200
    assert page.headers.get("x-content-type-options") == "nosniff"
    csp = csp_directives(page.headers.get("content-security-policy", ""))
    blocks = scan_page().blocks
    assert csp == {
        "default-src": ["'none'"],
        "script-src": [csp_hash(b) for b in blocks["script"]],
        "style-src": [csp_hash(b) for b in blocks["style"]],
        "img-src": ["'self'", "data:", "blob:"],
        "connect-src": ["'self'"],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
        "frame-ancestors": ["'none'"],
    }
    assert page.text == PAGE.read_text(encoding="utf-8")  # the hashes are of what is served


@pytest.mark.serve
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/metadata", 200),
        ("GET", "/healthz", 200),
        ("POST", "/classify", 415),
        ("GET", "/no-such-page", 404),
        ("GET", "/classify", 405),
    ],
)
def test_api_responses_forbid_everything_and_sniffing(served, method, path, status):
    response = served.http.request(method, path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-content-type-options") == "nosniff"
    assert csp_directives(response.headers.get("content-security-policy", "")) == {
        "default-src": ["'none'"],
        "frame-ancestors": ["'none'"],
    }


@pytest.mark.serve
@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", "/classify", {"POST"}), ("GET", "/classify/batch", {"POST"}), ("POST", "/", {"GET"})],
)
def test_wrong_method_gets_405_naming_the_allowed_ones(served, method, path, allowed):
    response = served.http.request(method, path)
    assert response.status_code == 405, response.text
    assert response.json()["error"] == "method_not_allowed"
    assert {m.strip() for m in response.headers.get("allow", "").split(",")} == allowed


@pytest.mark.serve
def test_clicking_a_bar_overlays_its_explanation_map(browser, served, tmp_path):
    """Click an attribute: the page asks POST /explain once and draws the map on a canvas over
    the photo. TinyNet's Bags_Under_Eyes reads the red of the top half only, so the canvas is
    painted on top and clear at the bottom; the opacity slider fades it. Screenshot:
    test-output/explain.png."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "red.jpg"
    photo.write_bytes(images.solid(images.RED))
    csp_violations(browser)  # drop earlier pages' messages
    upload(browser, served, photo)
    wait_for_result(browser)
    browser.find_element(By.CSS_SELECTOR, '#results .track[data-label="Bags_Under_Eyes"]').click()
    WebDriverWait(browser, 30).until(
        lambda b: (
            b.find_element(By.ID, "overlay").get_attribute("data-attribute") == "Bags_Under_Eyes"
        )
    )
    painted = browser.execute_script(
        """const c = document.getElementById("overlay");
        const alpha = (y0, y1) => {
          const d = c.getContext("2d").getImageData(0, y0, c.width, y1 - y0).data;
          let n = 0;
          for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
          return n;
        };
        return {w: c.width, h: c.height, top: alpha(0, c.height / 4),
                bottom: alpha(c.height * 7 / 8, c.height), visible: c.offsetWidth > 0};"""
    )
    assert painted["visible"] and painted["w"] > 100, painted
    assert painted["top"] > 0 and painted["bottom"] == 0, painted
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "explain.png"))  # at the default opacity
    slider = browser.find_element(By.ID, "opacity")
    slider.send_keys(Keys.END)
    assert browser.find_element(By.ID, "overlay").value_of_css_property("opacity") == "1"
    assert "Bags Under Eyes" in browser.find_element(By.ID, "explain-status").text
    assert csp_violations(browser) == []


@pytest.mark.serve
def test_page_marks_each_attribute_at_the_threshold_it_was_judged_by(browser, served, tmp_path):
    """Each bar's mark sits at the threshold the API judged that label by (its own tuned one
    when the artifact has them), not at one threshold for all."""
    from selenium.webdriver.common.by import By

    photo = tmp_path / "red.jpg"
    photo.write_bytes(images.solid(images.RED))
    answer = served.http.post(
        "/classify?top_k=40", content=photo.read_bytes(), headers={"content-type": "image/jpeg"}
    ).json()
    expected = {e["label"]: e["threshold"] for e in answer["labels"]}
    upload(browser, served, photo)
    wait_for_result(browser)
    marks = {
        track.get_attribute("data-label"): float(
            track.find_element(By.CSS_SELECTOR, ".threshold").get_attribute("data-threshold")
        )
        for track in browser.find_elements(By.CSS_SELECTOR, "#results .track")
    }
    assert marks == expected


@pytest.mark.serve
def test_docs_page_tries_classify_with_a_real_file(browser, served, tmp_path):
    """GET /docs: Swagger UI from the service's own files (no CDN) on /openapi.json; "Try it
    out" on POST /classify with a photo from disk answers 200 with the labels, and nothing on
    the page breaks the page's Content-Security-Policy."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "red.jpg"
    photo.write_bytes(images.solid(images.RED))
    docs = served.http.get("/docs")
    assert docs.status_code == 200
    csp = csp_directives(docs.headers["content-security-policy"])
    assert csp["script-src"] == ["'self'"] and csp["connect-src"] == ["'self'"], csp
    assert "http" not in docs.text.replace("http-equiv", "")  # no external URL on the page

    csp_violations(browser)
    browser.get(served.url + "/docs")
    wait = WebDriverWait(browser, 30)
    block = wait.until(lambda b: b.find_element(By.ID, "operations-default-classify"))
    block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(lambda b: block.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
    block.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(photo))
    block.find_element(By.CSS_SELECTOR, ".execute").click()
    status = wait.until(
        lambda b: block.find_element(
            By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_status"
        )
    )
    assert status.text.strip().startswith("200"), status.text
    body = block.find_element(
        By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_description"
    )
    # Swagger UI fills in the documented example attributes=Smiling,Eyeglasses
    assert '"probabilities"' in body.text and '"Smiling"' in body.text, body.text
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "docs.png"))
    assert csp_violations(browser) == []


@pytest.mark.serve
def test_page_draws_a_rollout_in_progress(browser, served, model_store):
    """A shadow step set through the config (as python -m serve_app.rollout sets it): the page
    shows the step and a row per version, the candidate's with its agreement."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from serve_app.rollout.serve_config import with_candidate, with_rollout

    config = with_candidate(served.base_config(), "face-attributes", served.model_uri("v2"))
    served.deploy(with_rollout(config, "face-attributes", "shadow", 100, "page/shadow", None))
    body = {"image": ("red.jpg", images.solid(images.RED), "image/jpeg")}
    wait_for(
        lambda: (
            served.http.post("/classify", files=body)
            and any(
                v["role"] == "candidate" for v in served.http.get("/rollout").json()["versions"]
            )
        ),
        60,
        "a shadow answer compared",
    )
    csp_violations(browser)
    browser.get(served.url + "/")
    WebDriverWait(browser, 20).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, "#rollout-rows tr[data-role=candidate]")
    )
    assert (
        "shadow: 100% of requests copied to the candidate"
        in browser.find_element(By.ID, "rollout-step").text
    )
    candidate = browser.find_element(By.CSS_SELECTOR, "#rollout-rows tr[data-role=candidate]")
    cells = [td.text for td in candidate.find_elements(By.TAG_NAME, "td")]
    assert cells[:2] == ["candidate", "v2"] and cells[7] == "100.0%", cells
    assert csp_violations(browser) == []
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "web-page-rollout.png"))
    served.deploy(served.base_config())


@pytest.mark.serve
def test_page_boxes_every_face_and_shows_the_chosen_faces_bars(browser, served, tmp_path):
    """A group photo (three copies of the astronaut): a box per face over the photo; clicking
    the second shows that face's 40 bars, the same numbers as POST /faces answers for it.
    Screenshot: test-output/faces.png."""
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_faces import ASTRONAUT_CROP, astronaut, jpeg

    group = Image.new("RGB", (900, 320), (60, 70, 80))
    for i, side in enumerate((200, 256, 230)):
        group.paste(astronaut().crop(ASTRONAUT_CROP).resize((side, side)), (30 + 290 * i, 30))
    photo = tmp_path / "group.jpg"
    photo.write_bytes(jpeg(group))
    answer = served.http.post(
        "/faces?top_k=40", files={"image": ("group.jpg", photo.read_bytes(), "image/jpeg")}
    ).json()
    assert len(answer["faces"]) == 3, answer
    csp_violations(browser)
    upload(browser, served, photo)
    wait_for_result(browser)
    boxes = browser.find_elements(By.CSS_SELECTOR, "#boxes .face-box")
    assert len(boxes) == 3
    assert "Face 1 of 3" in browser.find_element(By.ID, "status").text
    boxes[1].click()
    WebDriverWait(browser, 10).until(
        lambda b: b.find_element(By.ID, "status").get_attribute("data-face") == "1"
    )
    shown = {
        e.get_attribute("data-label"): e.text
        for e in browser.find_elements(By.CSS_SELECTOR, "#results .pct")
    }
    expected = {k: f"{v * 100:.1f}%" for k, v in answer["faces"][1]["probabilities"].items()}
    assert shown == expected
    assert "selected" in boxes[1].get_attribute("class")
    assert csp_violations(browser) == []
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "faces.png"))
