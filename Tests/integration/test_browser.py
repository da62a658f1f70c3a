"""A real headless Chromium drives the tutorial's pages: two pages in one room chat with each other,
and room names that try to inject script run none."""
import time
from urllib.parse import quote

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from conftest import unique_room


@pytest.fixture(scope="module")
def browsers():
    def make():
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900"):
            options.add_argument(arg)
        return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)

    drivers = [make(), make()]
    yield drivers
    for d in drivers:
        d.quit()


def enter_room(driver, base, room):
    driver.get(f"{base}/chat/")
    box = WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "room-name-input")))
    box.send_keys(room)
    box.send_keys(Keys.ENTER)
    WebDriverWait(driver, 10).until(lambda d: "/chat/" in d.current_url and d.current_url.rstrip("/") != f"{base}/chat")


def no_alert(driver):
    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def log_text(driver):
    return driver.find_element(By.ID, "chat-log").get_attribute("value")


def test_two_pages_in_one_room_chat_with_each_other(stack, browsers):
    first, second = browsers
    room = unique_room("browser")
    enter_room(first, stack.url, room)
    enter_room(second, stack.url, room)
    assert first.current_url == f"{stack.url}/chat/{room}/"
    time.sleep(0.5)  # both sockets open

    box = first.find_element(By.ID, "chat-message-input")
    box.send_keys("hello from the first page")
    box.send_keys(Keys.ENTER)  # Enter sends
    WebDriverWait(second, 10).until(lambda d: "hello from the first page" in log_text(d))

    second.find_element(By.ID, "chat-message-input").send_keys("and back from the second")
    second.find_element(By.ID, "chat-message-submit").click()  # so does the button
    WebDriverWait(first, 10).until(lambda d: "and back from the second" in log_text(d))
    assert log_text(first).splitlines() == ["hello from the first page", "and back from the second"]
    assert stack.stored(room) == [(1, "hello from the first page"), (2, "and back from the second")]


def test_a_unicode_room_entered_through_the_page(stack, browsers):
    first, _ = browsers
    room = "상담실" + unique_room("")
    enter_room(first, stack.url, room)
    time.sleep(0.3)
    box = first.find_element(By.ID, "chat-message-input")
    box.send_keys("안녕")
    box.send_keys(Keys.ENTER)
    WebDriverWait(first, 10).until(lambda d: "안녕" in log_text(d))
    assert room in first.title


@pytest.mark.parametrize("room", ["</script><script>alert(1)</script>", "';alert(1);'"])
def test_room_names_that_try_to_inject_script_run_none(stack, browsers, room):
    driver, _ = browsers
    # Typed into the tutorial's form ...
    enter_room(driver, stack.url, room)
    time.sleep(0.5)
    assert no_alert(driver)
    assert "Invalid room name" in driver.find_element(By.ID, "error").text
    # ... and opened directly, with the page's own WebSocket refused too.
    driver.get(f"{stack.url}/chat/{quote(room, safe='')}/")
    time.sleep(0.3)
    assert no_alert(driver)
    driver.get(f"{stack.url}/chat/{room}/")
    time.sleep(0.3)
    assert no_alert(driver)


def test_consultation_page_shop_and_visitor_in_two_browser_contexts(stack, browsers):
    import uuid
    shop_page, visitor_page = browsers
    tag = uuid.uuid4().hex[:8]
    shop, visitor = f"shop-{tag}@example.com", f"visitor-{tag}@example.com"

    def login(driver, email, role):
        driver.get(f"{stack.url}/consult/")
        driver.execute_script("sessionStorage.clear()")
        driver.get(f"{stack.url}/consult/")
        WebDriverWait(driver, 10).until(EC.visibility_of_element_located((By.ID, "login-email"))).send_keys(email)
        driver.find_element(By.CSS_SELECTOR, f"#login-role option[value='{role}']").click()
        driver.find_element(By.ID, "login-submit").click()
        WebDriverWait(driver, 10).until(EC.visibility_of_element_located((By.ID, "new-room-email")))

    def rooms(driver):
        return driver.find_elements(By.CSS_SELECTOR, "#room-list li.room")
    # The room list re-renders itself on a timer: an element found a moment ago may be gone, so waits that
    # touch one look it up again instead of failing.
    def settled(driver):
        return WebDriverWait(driver, 10, ignored_exceptions=[StaleElementReferenceException])
    def open_first_room(driver):
        settled(driver).until(lambda d: rooms(d)[0].click() or True)

    login(shop_page, shop, "shop")
    login(visitor_page, visitor, "visitor")
    shop_page.find_element(By.ID, "new-room-email").send_keys(visitor)
    shop_page.find_element(By.ID, "new-room-submit").click()
    WebDriverWait(shop_page, 10).until(lambda d: len(rooms(d)) == 1)
    WebDriverWait(visitor_page, 10).until(lambda d: len(rooms(d)) == 1)  # the room list refreshes itself

    open_first_room(visitor_page)
    box = WebDriverWait(visitor_page, 10).until(EC.visibility_of_element_located((By.ID, "chat-message-input")))
    time.sleep(0.5)
    box.send_keys("Hi, do you ship to Busan?")
    box.send_keys(Keys.ENTER)
    WebDriverWait(visitor_page, 10).until(lambda d: "Hi, do you ship to Busan?" in d.find_element(By.ID, "chat-log").text)

    # The shop owner sees one unread message in the list, opens the room, and reads it.
    settled(shop_page).until(lambda d: rooms(d) and rooms(d)[0].find_element(By.CLASS_NAME, "unread").get_attribute("data-count") == "1")
    open_first_room(shop_page)
    WebDriverWait(shop_page, 10).until(lambda d: "Hi, do you ship to Busan?" in d.find_element(By.ID, "chat-log").text)
    # ... and the visitor sees the read receipt.
    WebDriverWait(visitor_page, 10).until(lambda d: "up to #1" in d.find_element(By.ID, "read-receipt").text)

    reply = shop_page.find_element(By.ID, "chat-message-input")
    reply.send_keys("Yes, in two days.")
    shop_page.find_element(By.ID, "chat-message-submit").click()
    WebDriverWait(visitor_page, 10).until(lambda d: "Yes, in two days." in d.find_element(By.ID, "chat-log").text)
    assert shop in visitor_page.find_element(By.ID, "chat-log").text  # shown with its sender
    assert no_alert(shop_page) and no_alert(visitor_page)


@pytest.fixture(scope="module")
def lone_gateway():
    """A stack whose one gateway the test kills and starts again on the same port."""
    from conftest import QUICK_MEMBERSHIP, Stack
    s = Stack("reconnect", env=QUICK_MEMBERSHIP).start()
    yield s
    s.stop()


def connection_state(driver):
    return driver.find_element(By.ID, "connection-state").get_attribute("data-state")


def test_the_room_page_reconnects_by_itself_and_sends_what_was_typed_meanwhile_exactly_once(lone_gateway, browsers):
    from conftest import wait_http
    stack = lone_gateway
    first, second = browsers
    room = unique_room("reconnect")
    enter_room(first, stack.url, room)
    enter_room(second, stack.url, room)
    for d in (first, second):
        WebDriverWait(d, 10).until(lambda d: connection_state(d) == "connected")
    first.find_element(By.ID, "chat-message-input").send_keys("before", Keys.ENTER)
    WebDriverWait(second, 10).until(lambda d: "before" in log_text(d))

    port = stack.gateways[0]
    stack.kill("gateway0")
    for d in (first, second):
        WebDriverWait(d, 10).until(lambda d: connection_state(d) == "reconnecting")
    first.find_element(By.ID, "chat-message-input").send_keys("typed while away", Keys.ENTER)
    time.sleep(1.0)
    stack._spawn("gateway0", "Gateway", {"CHAT_GATEWAY_PORT": str(port), "CHAT_GATEWAY_ID": f"{stack.name}-gateway0-again"})
    wait_http(f"http://127.0.0.1:{port}/health/ready")
    for d in (first, second):
        WebDriverWait(d, 30).until(lambda d: connection_state(d) == "connected")
        WebDriverWait(d, 10).until(lambda d: "typed while away" in log_text(d))
    first.find_element(By.ID, "chat-message-input").send_keys("after", Keys.ENTER)
    for d in (first, second):
        WebDriverWait(d, 10).until(lambda d: "after" in log_text(d))
        assert log_text(d).splitlines() == ["before", "typed while away", "after"]  # nothing missed or doubled
    assert stack.stored(room) == [(1, "before"), (2, "typed while away"), (3, "after")]
