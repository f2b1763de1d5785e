//! Headless Chromium for the browser tests (the admin page, the room panel), driven through
//! chromedriver: WebDriver is plain HTTP and JSON, so no client crate is needed.
//!
//! Chromium is driven over WebDriver rather than `chromium --dump-dom --virtual-time-budget=…`:
//! the pages keep a live stream (server-sent events) or a poll open, and virtual time does not
//! advance while a request is in flight, so `--dump-dom` never returns. WebDriver also lets a
//! test wait for a DOM condition itself instead of guessing a budget.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`.ci/services/chromium.sh install`);
//! [`chromium_installed`] says "skipped" without them, unless `CALBRIDGE_REQUIRE_SERVICES=1`
//! makes that a failure. Chromium does not start under libfaketime, so these tests pin the
//! service's clock themselves and are left out of `.ci/at-instants`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether Chromium and chromedriver are installed; without them a test returns early after
/// saying it skipped, unless `CALBRIDGE_REQUIRE_SERVICES=1` (CI), where that fails the test.
pub fn chromium_installed() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|program| !Path::new(program).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CALBRIDGE_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "{missing:?} not installed but CALBRIDGE_REQUIRE_SERVICES=1: \
         run .ci/services/chromium.sh install"
    );
    eprintln!("skipped: chromium not installed (run .ci/services/chromium.sh install)");
    false
}

/// chromedriver on a free loopback port, in its own process group so that the browsers it
/// starts can be killed with it.
pub struct ChromeDriver {
    child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
    log_path: std::path::PathBuf,
}

impl ChromeDriver {
    pub async fn start(scratch: &Path) -> ChromeDriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let log_path = scratch.join("chromedriver.log");
        let log = std::fs::File::create(&log_path).expect("a log file");
        // chromedriver's own log and, through `--enable-logging=stderr`, Chromium's output go
        // to one file, shown when the browser fails.
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--log-level=INFO")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a second handle on the log"))
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let driver = ChromeDriver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: calbridge_net::build_http_client(None).expect("an HTTP client"),
            log_path,
        };
        let started = Instant::now();
        loop {
            let ready = driver
                .http
                .get(format!("{}/status", driver.base))
                .send()
                .await
                .ok();
            if let Some(response) = ready {
                let status: Value = response.json().await.unwrap_or(Value::Null);
                if status["value"]["ready"] == true {
                    return driver;
                }
            }
            if started.elapsed() > Duration::from_secs(20) {
                driver.fail("chromedriver did not get ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One WebDriver command; returns its `value`, failing the test (with chromedriver's and
    /// Chromium's output) on a WebDriver error.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_call(method, path, body).await {
            Ok(value) => value,
            Err(error) => self.fail(&error),
        }
    }

    pub async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| format!("WebDriver {path}: chromedriver does not answer: {error}"))?;
        let status = response.status();
        let answer: Value = response
            .json()
            .await
            .map_err(|error| format!("WebDriver {path}: {status}, not JSON: {error}"))?;
        if !status.is_success() {
            return Err(format!("WebDriver {path}: {status} {answer}"));
        }
        Ok(answer["value"].clone())
    }

    /// The last lines chromedriver and Chromium wrote.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!(
            "--- last lines of {} (chromedriver and Chromium) ---\n{tail}",
            self.log_path.display()
        )
    }

    /// Kills chromedriver and its browsers and fails the test with what they printed.
    pub fn fail(&self, what: &str) -> ! {
        self.kill();
        panic!("{what}\n{}", self.log_tail());
    }

    pub fn kill(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

/// One browser (a fresh headless Chromium with its own profile) and its WebDriver session.
pub struct Session<'d> {
    driver: &'d ChromeDriver,
    id: String,
    /// The profiles live as long as the session.
    _profiles: Vec<tempfile::TempDir>,
}

impl<'d> Session<'d> {
    /// Starts a browser with a window of `width`×`height` pixels.
    pub async fn open(
        driver: &'d ChromeDriver,
        scratch: &Path,
        width: u32,
        height: u32,
    ) -> Session<'d> {
        // The first start of a freshly installed Chromium builds its font and profile caches
        // and can miss chromedriver's start-up deadline ("DevToolsActivePort file doesn't
        // exist"); one more try with a fresh profile is what a person at the keyboard would do
        // too. What the first try printed is shown, so that a real failure is not hidden.
        let mut profiles = Vec::new();
        for attempt in 1..=2 {
            let profile = tempfile::tempdir_in(scratch).expect("a profile directory");
            let capabilities = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-quic",
                        "--no-first-run",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        "--disable-dev-shm-usage",
                        "--hide-scrollbars",
                        "--force-device-scale-factor=1",
                        format!("--window-size={width},{height}"),
                        "--enable-logging=stderr",
                        format!("--user-data-dir={}", profile.path().display()),
                    ],
                },
            }}});
            profiles.push(profile);
            match driver
                .try_call(reqwest::Method::POST, "/session", Some(capabilities))
                .await
            {
                Ok(session) => {
                    let id = session["sessionId"]
                        .as_str()
                        .unwrap_or_else(|| driver.fail(&format!("a WebDriver session: {session}")))
                        .to_string();
                    return Session {
                        driver,
                        id,
                        _profiles: profiles,
                    };
                }
                Err(error) if attempt == 1 => eprintln!(
                    "the first browser start failed, trying once more: {error}\n{}",
                    driver.log_tail()
                ),
                Err(error) => driver.fail(&error),
            }
        }
        unreachable!("the loop returns or fails on its second attempt")
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.id)
    }

    pub async fn goto(&self, url: &str) {
        self.driver
            .call(
                reqwest::Method::POST,
                &self.path("/url"),
                Some(json!({"url": url})),
            )
            .await;
    }

    /// Makes the window `width`×`height` pixels.
    pub async fn resize(&self, width: u32, height: u32) {
        self.driver
            .call(
                reqwest::Method::POST,
                &self.path("/window/rect"),
                Some(json!({"width": width, "height": height})),
            )
            .await;
    }

    /// Runs `script` (a function body: `return …;`) in the page and returns its value.
    pub async fn script(&self, script: &str) -> Value {
        self.driver
            .call(
                reqwest::Method::POST,
                &self.path("/execute/sync"),
                Some(json!({"script": script, "args": []})),
            )
            .await
    }

    /// Clicks the element `css_selector` finds, as a pointer would: WebDriver scrolls it into
    /// view and refuses (failing the test) an element that is hidden or covered.
    pub async fn click(&self, css_selector: &str) {
        let element = self
            .driver
            .call(
                reqwest::Method::POST,
                &self.path("/element"),
                Some(json!({"using": "css selector", "value": css_selector})),
            )
            .await;
        // The W3C WebDriver name of an element reference in JSON.
        let id = element["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| self.driver.fail(&format!("{css_selector}: {element}")))
            .to_string();
        self.driver
            .call(
                reqwest::Method::POST,
                &self.path(&format!("/element/{id}/click")),
                Some(json!({})),
            )
            .await;
    }

    /// Runs `probe` every 100 ms until `done` holds for its value, and returns that value;
    /// fails the test with the last value after `patience`.
    pub async fn wait_until(
        &self,
        what: &str,
        probe: &str,
        patience: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let value = self.script(probe).await;
            if done(&value) {
                return value;
            }
            if started.elapsed() > patience {
                self.driver.fail(&format!(
                    "timed out after {patience:?} waiting for {what}; the page showed: {value}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The DOM as it is now.
    pub async fn source(&self) -> String {
        self.driver
            .call(reqwest::Method::GET, &self.path("/source"), None)
            .await
            .as_str()
            .expect("the page source")
            .to_string()
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let screenshot = self
            .driver
            .call(reqwest::Method::GET, &self.path("/screenshot"), None)
            .await;
        base64_decode(screenshot.as_str().expect("a base64 screenshot"))
    }

    pub async fn close(self) {
        self.driver
            .call(reqwest::Method::DELETE, &self.path(""), None)
            .await;
    }
}

/// Width and height of a PNG image, from its IHDR chunk; fails on anything else.
pub fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "a PNG image"
    );
    let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
    let height = u32::from_be_bytes([png[20], png[21], png[22], png[23]]);
    (width, height)
}

/// Standard base64 (WebDriver's screenshot encoding); the tests have no base64 crate.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |byte: u8| -> u32 {
        match byte {
            b'A'..=b'Z' => u32::from(byte - b'A'),
            b'a'..=b'z' => u32::from(byte - b'a') + 26,
            b'0'..=b'9' => u32::from(byte - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", byte as char),
        }
    };
    let symbols: Vec<u8> = text
        .bytes()
        .filter(|byte| !byte.is_ascii_whitespace() && *byte != b'=')
        .collect();
    let mut bytes = Vec::with_capacity(symbols.len() * 3 / 4);
    for chunk in symbols.chunks(4) {
        let mut bits = 0u32;
        for (index, symbol) in chunk.iter().enumerate() {
            bits |= value(*symbol) << (18 - 6 * index);
        }
        let n_bytes = chunk.len().saturating_sub(1);
        bytes.extend_from_slice(&bits.to_be_bytes()[1..1 + n_bytes]);
    }
    bytes
}
