"""The web page at `/`, driven in headless Chromium (Debian's `chromium` and `chromium-driver`, which
`make test` installs where they are missing): draw an image, caption an uploaded one, roll a clip out."""

import shutil

import numpy as np
import openai
import pytest

from ringworld.media import write_gif, write_image
from ringworld.world.sim import random_state, render, rollout

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev extra: pip install -e .[dev]")
BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (BROWSER and DRIVER),
        reason="needs chromium and chromedriver on PATH (apt install chromium chromium-driver)",
    ),
]


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


def _wait(browser, condition, seconds: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, seconds).until(lambda b: condition(b))


def test_the_page_draws_captions_and_rolls_out(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server.url)
    assert browser.title == "ringworld"
    find = browser.find_element

    find(By.ID, "draw-image").click()
    drawn = _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#drawn img"))
    assert drawn[0].get_attribute("src").startswith("data:image/png;base64,")
    assert _wait(browser, lambda b: b.execute_script("return arguments[0].naturalWidth", drawn[0])) == 32

    frame = render(random_state(np.random.default_rng(5)))
    write_image(tmp_path / "look.png", frame)
    find(By.ID, "look-file").send_keys(str(tmp_path / "look.png"))
    find(By.ID, "look").click()
    said = _wait(browser, lambda b: (t := b.find_element(By.ID, "answer").text) not in ("", "…") and t)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    content = [{"type": "image_url", "image_url": {"url": _png_uri(tmp_path / "look.png")}}]
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], max_tokens=48)
    assert said == (reply.choices[0].message.content or "(nothing)")  # the caption the API gives

    clip = render(rollout(random_state(np.random.default_rng(6), agent=True), 1))
    write_gif(tmp_path / "clip.gif", clip)
    find(By.ID, "clip-file").send_keys(str(tmp_path / "clip.gif"))
    find(By.ID, "roll").click()
    rolled = _wait(browser, lambda b: (src := b.find_element(By.ID, "rolled").get_attribute("src")) and src)
    assert rolled.startswith("data:image/gif;base64,")
    assert find(By.ID, "count").text == "0"  # nothing left in flight
    assert not browser.find_elements(By.CSS_SELECTOR, ".error")


def _png_uri(path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
